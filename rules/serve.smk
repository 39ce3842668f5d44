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
