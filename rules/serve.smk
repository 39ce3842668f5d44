# Base model + LoRA adapter -> Triton model repository (Python backend) and a vLLM-backend variant


rule deploy:
    """Write the Triton repository (base + adapter, per-request switching) and the vLLM variant."""
    input:
        base=BASE_MODEL_DIR,
        adapter=rules.train.output.adapter,
    output:
        triton=directory("results/serve/triton_repo"),
        vllm=directory("results/serve/vllm_repo"),
    log:
        "logs/deploy.log",
    conda:
        "../envs/serve.yaml"
    params:
        engine=config["serve"]["engine"],
        settings=stable(config["serve"]["repository"]),
    script:
        "../scripts/deploy.py"


rule deploy_step:
    """The adapter training kept at one of evaluate.steps (train.adapter_every) -> its own
    Triton repository, served as the final one is; written once that step has been trained.
    """
    input:
        base=BASE_MODEL_DIR,
        trained=lambda wc: step_trained_by(int(wc.step)),
    output:
        triton=directory("results/serve/steps/{step}/triton_repo"),
    log:
        "logs/deploy_step/{step}.log",
    wildcard_constraints:
        step="[0-9]+",
    conda:
        "../envs/serve.yaml"
    params:
        adapter=lambda wc: str(step_dir(TRAIN_SNAPSHOTS, wc.step)),
        engine=config["serve"]["engine"],
        settings=stable(config["serve"]["repository"]),
    script:
        "../scripts/deploy.py"
