# training.jsonl + base model -> LoRA adapter (HF PEFT), metrics, loss curve


if TRAIN_SEGMENTS:

    rule train_segment:
        """One segment of the LoRA run (train.segment_steps): resumes from the previous segment's
        checkpoint, trains to its step and leaves a checkpoint there for the next job.
        """
        input:
            training=rules.merge.output.training,
            base=BASE_MODEL_DIR,
            previous=lambda wc: train_segment_done(int(wc.seg) - 1),
        output:
            done="results/train/segments/{seg}.json",
            metrics="results/train/segments/{seg}.metrics.csv",
        log:
            "logs/train_segment/{seg}.log",
        benchmark:
            "benchmarks/train_segment/{seg}.tsv"
        wildcard_constraints:
            seg="[0-9]+",
        conda:
            "../envs/train.yaml"
        threads: 8 * TRAIN_GPUS
        resources:
            mem_mb=65536,
            runtime=train_job_minutes(),
            gpu=TRAIN_GPUS,
        params:
            settings=train_settings(),
            stop_at_step=lambda wc: TRAIN_SEGMENTS[int(wc.seg) - 1],
            checkpoints="results/train/checkpoints",
            snapshots=TRAIN_SNAPSHOTS,
        script:
            "../scripts/train_segment.py"


rule train:
    """transformers + PEFT LoRA; train.gpus GPUs (torchrun, data parallel) on Slurm, CPU in the demo;
    resumes after preemption; with train.segment_steps, the last segment of the run (after the
    train_segment jobs).
    """
    input:
        training=rules.merge.output.training,
        base=BASE_MODEL_DIR,
        segments=train_segment_done(len(TRAIN_SEGMENTS)),
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
    threads: 8 * TRAIN_GPUS
    resources:
        mem_mb=65536,
        runtime=train_job_minutes(),
        gpu=TRAIN_GPUS,
    params:
        settings=train_settings(),
        checkpoints="results/train/checkpoints",
        merged_dir="results/train/merged",
        snapshots=TRAIN_SNAPSHOTS,
    script:
        "../scripts/train.py"
