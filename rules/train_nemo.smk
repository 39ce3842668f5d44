# train.backend: nemo -- the seed's NeMo 2 recipe (nemo_toolkit 2.7, llm.finetune + LoRA) in the
# NeMo container: HF base -> NeMo checkpoint (cached) -> LoRA checkpoints -> HF PEFT adapter.
# The `train` rule keeps the HF backend's outputs, so deploy/evaluate are the same for both.


rule nemo_import:
    """HF base model -> NeMo checkpoint (llm.import_ckpt); depends on the base model only."""
    input:
        base=BASE_MODEL_DIR,
    output:
        ckpt=directory("results/train/nemo/base_model"),
    log:
        "logs/nemo_import.log",
    benchmark:
        "benchmarks/nemo_import.tsv"
    container:
        nemo_options()["image"]
    resources:
        mem_mb=131072,
        runtime=120,
    params:
        step="import",
        python=nemo_options()["python"],
        values=nemo_values("import"),
    script:
        "../scripts/nemo.py"


rule train:
    """llm.finetune with LoRA (resumes its newest checkpoint), then export to HF PEFT."""
    input:
        training=rules.merge.output.training,
        nemo_base=rules.nemo_import.output.ckpt,
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
    container:
        nemo_options()["image"]
    threads: 8
    resources:
        mem_mb=131072,
        runtime=2880,
    params:
        step="train",
        python=nemo_options()["python"],
        values=nemo_values("train"),
    script:
        "../scripts/nemo.py"
