# Benchmarks (MMLU, GPQA Diamond, GPQA Main) -> answers from the served models -> CSVs and a plot


rule eval_prep:
    """One benchmark's raw release file (or URL) -> items JSONL with a sha256 sidecar."""
    input:
        source=eval_source_input,
    output:
        jsonl="results/eval/data/{benchmark}.jsonl",
        meta="results/eval/data/{benchmark}.json",
    log:
        "logs/eval_prep/{benchmark}.log",
    localrule: True
    conda:
        "../envs/curation.yaml"
    params:
        benchmark="{benchmark}",
        source=lambda wc: config["evaluate"]["sources"][wc.benchmark],
        sha256=lambda wc: config["evaluate"].get("sha256", {}).get(wc.benchmark),
        subjects=config["evaluate"]["mmlu_subjects"],
        seed=config["evaluate"]["shuffle_seed"],
        cache_dir="resources/eval/downloads",
    script:
        "../scripts/eval_prep.py"


rule evaluate:
    """Start Triton + the OpenAI front end for this job, ask every item, stop the servers."""
    input:
        jsonl="results/eval/data/{benchmark}.jsonl",
        meta="results/eval/data/{benchmark}.json",
        triton=eval_triton,
    output:
        csv="results/eval/items/{model}/{benchmark}/{mode}.csv",
        run="results/eval/items/{model}/{benchmark}/{mode}.json",
    log:
        "logs/evaluate/{model}/{benchmark}/{mode}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{benchmark}/{mode}.tsv"
    conda:
        "../envs/serve.yaml"
    threads: 2
    resources:
        mem_mb=32768,
        runtime=480,
    params:
        model="{model}",
        served_model=eval_served_model,
        benchmark="{benchmark}",
        mode="{mode}",
        settings=stable(config["evaluate"]["settings"]),
        cache="results/eval/cache/{model}/{benchmark}/{mode}.jsonl",
        serve=serve_settings(),
    script:
        "../scripts/evaluate.py"


rule eval_report:
    """Summary (accuracy, std-err, no-answer rate, latency), base-vs-adapter deltas, bar chart;
    accuracy and no-answer rate against training step (evaluate.steps, then the final adapter).
    """
    input:
        csvs=expand(
            "results/eval/items/{model}/{benchmark}/{mode}.csv",
            model=list(config["evaluate"]["models"]),
            benchmark=config["evaluate"]["benchmarks"],
            mode=config["evaluate"]["modes"],
        ),
        step_csvs=expand(
            "results/eval/items/{model}/{benchmark}/{mode}.csv",
            model=[step_label(s) for s in EVAL_STEPS],
            benchmark=config["evaluate"]["benchmarks"],
            mode=config["evaluate"]["modes"],
        ),
    output:
        summary=report(
            "results/eval/summary.csv",
            category="Evaluation",
            caption="../report/summary.rst",
        ),
        comparison=report(
            "results/eval/comparison.csv",
            category="Evaluation",
            caption="../report/comparison.rst",
        ),
        plot=report(
            "results/eval/accuracy.png",
            category="Evaluation",
            caption="../report/accuracy.rst",
        ),
        steps=report(
            "results/eval/steps.csv",
            category="Evaluation",
            caption="../report/steps.rst",
        ),
        steps_plot=report(
            "results/eval/steps.png",
            category="Evaluation",
            caption="../report/steps.rst",
        ),
    log:
        "logs/eval_report.log",
    conda:
        "../envs/curation.yaml"
    params:
        baseline=config["evaluate"]["baseline"],
        final_step=config["train"]["max_steps"],
    script:
        "../scripts/eval_report.py"
