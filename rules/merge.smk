# Curated shards -> dedup, decontamination, curriculum sort and interleave (dask) -> training.jsonl


rule merge:
    """Global curriculum merge on a dask LocalCluster sized to the job's threads."""
    input:
        kept=curated("kept.jsonl"),
        benchmarks=prepared_benchmarks(),
        questions=config["merge"].get("question_files", []),
    output:
        training="results/merge/training.jsonl",
        duplicates="results/merge/duplicates.jsonl",
        contaminated="results/merge/contaminated.jsonl",
        stats="results/merge/merge_stats.json",
        decontamination=report(
            "results/merge/decontamination.csv",
            category="Data",
            caption="../report/decontamination.rst",
        ),
    log:
        "logs/merge.log",
    benchmark:
        "benchmarks/merge.tsv"
    conda:
        "../envs/curation.yaml"
    threads: config["merge"].get("threads", 2)
    resources:
        mem_mb=lambda wc, threads: 4096 + 4096 * threads,
        runtime=240,
    params:
        settings=merge_settings(),
        benchmarks=decontamination_benchmarks(),
    script:
        "../scripts/merge.py"


rule dataset_stats:
    """Funnel over every filter, category x reasoning counts, token histograms (dask), plots."""
    input:
        shard_stats=curated("stats.json"),
        merge_stats=rules.merge.output.stats,
        training=rules.merge.output.training,
    output:
        summary="results/stats/summary.json",
        funnel="results/stats/funnel.csv",
        categories="results/stats/category_reasoning.csv",
        histograms="results/stats/token_histograms.csv",
        funnel_png=report(
            "results/stats/funnel.png", category="Data", caption="../report/funnel.rst"
        ),
        hist_png=report(
            "results/stats/token_histograms.png",
            category="Data",
            caption="../report/token_histograms.rst",
        ),
        cat_png=report(
            "results/stats/category_reasoning.png",
            category="Data",
            caption="../report/category_reasoning.rst",
        ),
    log:
        "logs/dataset_stats.log",
    conda:
        "../envs/curation.yaml"
    params:
        max_tokens=config["curation"]["max_tokens"],
        max_completion_tokens=config["curation"]["max_completion_tokens"],
    script:
        "../scripts/dataset_stats.py"
