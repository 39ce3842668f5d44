# (data.source: hub dataset ->) raw SFT files -> line-aligned byte-range shards -> NeMo Curator per shard.


rule download_model:
    """Fetch a hub model/tokenizer once (login node; HF_TOKEN from the environment)."""
    output:
        directory("resources/hub/{repo}"),
    log:
        "logs/download_model/{repo}.log",
    localrule: True
    conda:
        "../envs/curation.yaml"
    params:
        repo_id=lambda wc: hub.repo_id_from_dirname(wc.repo),
        revision=config["model"].get("revision", "main"),
    script:
        "../scripts/download_model.py"


if DATA_SOURCE:

    checkpoint fetch_data:
        """Fetch the data.file_filter selection of data.source into data.raw_dir, verified
        (login node; HF_TOKEN from the environment); the shards are planned from it.
        """
        output:
            manifest="results/data/manifest.json",
            table=report(
                "results/data/manifest.csv",
                category="Data",
                caption="../report/data_manifest.rst",
            ),
        log:
            "logs/fetch_data.log",
        localrule: True
        conda:
            "../envs/curation.yaml"
        params:
            repo=DATA_SOURCE["repo"],
            revision=DATA_SOURCE.get("revision", "main"),
            file_filter=config["data"]["file_filter"],
            raw_dir=str(RAW_DIR),
        script:
            "../scripts/fetch_data.py"


rule split_shard:
    """Stream one byte range of a raw file into a line-aligned shard."""
    input:
        raw=raw_file,
    output:
        shard="results/curation/shards/{source}/{shard}.jsonl",
        info="results/curation/shards/{source}/{shard}.json",
    log:
        "logs/split_shard/{source}/{shard}.log",
    conda:
        "../envs/curation.yaml"
    resources:
        mem_mb=1024,
        runtime=60,
    params:
        shard_bytes=SHARD_BYTES,
    script:
        "../scripts/split_shard.py"


rule curate_shard:
    """NeMo Curator 1.x pipeline (RECIPE.md §2) on one shard, on a private Ray instance."""
    input:
        shard="results/curation/shards/{source}/{shard}.jsonl",
        info="results/curation/shards/{source}/{shard}.json",
        tokenizer=TOKENIZER_DIR,
    output:
        kept="results/curation/curated/{source}/{shard}.kept.jsonl",
        dropped="results/curation/curated/{source}/{shard}.dropped.jsonl",
        rejects="results/curation/curated/{source}/{shard}.rejects.jsonl",
        stats="results/curation/curated/{source}/{shard}.stats.json",
    log:
        "logs/curate_shard/{source}/{shard}.log",
    benchmark:
        "benchmarks/curate_shard/{source}/{shard}.tsv"
    conda:
        "../envs/curation.yaml"
    threads: config["curation"].get("threads", 1)
    resources:
        mem_mb=lambda wc, threads: 4096 + 2048 * threads,
        runtime=240,
    params:
        settings=curation_settings(),
    script:
        "../scripts/curate_shard.py"


rule curation_summary:
    """Funnel over all shards: rows in, kept, dropped per filter, rejected."""
    input:
        stats=curated("stats.json"),
    output:
        json="results/curation/summary.json",
        funnel="results/curation/funnel.csv",
    log:
        "logs/curation_summary.log",
    conda:
        "../envs/curation.yaml"
    script:
        "../scripts/curation_summary.py"
