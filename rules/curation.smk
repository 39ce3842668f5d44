# Raw SFT files -> line-aligned byte-range shards -> NeMo Curator pipeline per shard.


rule download_model:
    """Fetch a hub model/tokenizer once (login node; HF_TOKEN from the environment)."""
    output:
        directory("resources/hub/{repo}"),
    params:
        repo_id=lambda wc: hub.repo_id_from_dirname(wc.repo),
        revision=config["model"].get("revision", "main"),
    log:
        "logs/download_model/{repo}.log",
    localrule: True
    script:
        "../scripts/download_model.py"


rule split_shard:
    """Stream one byte range of a raw file into a line-aligned shard."""
    input:
        raw=raw_file,
    output:
        shard="results/curation/shards/{source}/{shard}.jsonl",
        info="results/curation/shards/{source}/{shard}.json",
    params:
        shard_bytes=SHARD_BYTES,
    log:
        "logs/split_shard/{source}/{shard}.log",
    resources:
        mem_mb=1024,
        runtime=60,
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
    params:
        settings=curation_settings(),
    threads: config["curation"].get("threads", 1)
    resources:
        mem_mb=lambda wc, threads: 4096 + 2048 * threads,
        runtime=240,
    log:
        "logs/curate_shard/{source}/{shard}.log",
    benchmark:
        "benchmarks/curate_shard/{source}/{shard}.tsv"
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
    script:
        "../scripts/curation_summary.py"
