# training.jsonl + base model -> LoRA adapter (HF PEFT), metrics, loss curve


rule train:
    """transformers + PEFT LoRA; one GPU on Slurm, CPU in the demo; resumes after preemption."""
    input:
        training=rules.merge.output.training,
        base=BASE_MODEL_DIR,
    output:
        adapter=directory("results/train/adapter"),
        metrics="results/train/metrics.csv",
        loss_png=report(
            "results/train/loss.png", category="Training", caption="../report/loss.rst"
        ),
    log:
        "logs/train.log",
    benchmark:
        "benchmarks/train.tsv"
    conda:
        "../envs/train.yaml"
    threads: 4
    resources:
        mem_mb=65536,
        runtime=2880,
    params:
        settings=train_settings(),
        checkpoints="results/train/checkpoints",
        merged_dir="results/train/merged",
    script:
        "../scripts/train.py"
