"""The NeMo 2 training backend's recipe, as plain values (no NeMo import needed).

``recipe_values`` maps this project's ``train`` config onto every value NVIDIA's seed notebook
sets (``NVIDIA/NeMo: tutorials/llm/reasoning/Reasoning-SFT.ipynb``, tested by NVIDIA in the
``nvcr.io/nvidia/nemo:25.04.01`` container), with the same names as the NeMo objects they go
to. ``reasonflow.train.nemo_backend`` builds the ``nemo_run`` recipe from them and reads them
back, so a test can compare the built recipe with :data:`SEED` and with a changed config.

What the seed does not set is left at NeMo's defaults (Adam betas/eps, LoRA dropout position,
init methods). ``optimizer_cpu_offload=True``, which the notebook passes to ``MegatronStrategy``,
is not reproduced: it lands in the torch-DDP kwargs there and has no effect with Megatron DDP.
"""

from __future__ import annotations

from reasonflow.train.settings import TrainSettings

# HF projection names -> the Megatron modules NeMo's LoRA targets (q/k/v and gate/up are fused there)
HF_TO_MEGATRON = {"q_proj": "linear_qkv", "k_proj": "linear_qkv", "v_proj": "linear_qkv", "o_proj": "linear_proj",
                  "gate_proj": "linear_fc1", "up_proj": "linear_fc1", "down_proj": "linear_fc2"}
FUSED = {"linear_qkv": {"q_proj", "k_proj", "v_proj"}, "linear_fc1": {"gate_proj", "up_proj"}}

# The seed notebook's values (line numbers of the .ipynb JSON at NVIDIA/NeMo main 8cfedd72).
SEED = {
    "peft.dim": 64,                                  # l.440 LoRA(dim=64, alpha=128)
    "peft.alpha": 128,
    "peft.dropout": 0.0,                             # LoRA default
    "peft.target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],  # LoRA default
    "optim.config.optimizer": "adam",                # l.367-372 OptimizerConfig
    "optim.config.lr": 1e-4,
    "optim.config.weight_decay": 0.001,
    "optim.config.clip_grad": 1.0,
    "optim.config.use_distributed_optimizer": True,
    "optim.config.bf16": True,
    "optim.lr_scheduler.warmup_steps": 100,          # l.356 int(N_STEPS * 0.05)
    "optim.lr_scheduler.constant_steps": 0,          # l.359-361 CosineAnnealingScheduler
    "optim.lr_scheduler.min_lr": 1e-5,
    "data.seq_length": 8192,                         # l.222-231 FineTuningDataModule
    "data.micro_batch_size": 1,
    "data.global_batch_size": 256,
    "data.seed": 1234,
    "data.memmap_workers": 1,
    "data.num_workers": 8,
    "data.pin_memory": True,
    "trainer.max_steps": 2000,                       # l.111 N_STEPS, l.275-292 Trainer
    "trainer.devices": 1,
    "trainer.num_nodes": 1,
    "trainer.accelerator": "gpu",
    "trainer.log_every_n_steps": 10,
    "trainer.limit_val_batches": 0,
    "trainer.val_check_interval": 0,
    "trainer.num_sanity_val_steps": 0,
    "trainer.use_distributed_sampler": False,
    "trainer.strategy.tensor_model_parallel_size": 1,
    "trainer.plugins.precision": "bf16-mixed",       # bf16_mixed()
    "log.ckpt.every_n_train_steps": 100,             # l.314-330 ModelCheckpoint
    "log.ckpt.save_top_k": 2,
    "log.ckpt.save_last": True,
    "log.ckpt.monitor": "reduced_train_loss",
    "log.ckpt.save_on_train_epoch_end": True,
    "log.ckpt.save_optim_on_train_end": True,
    "resume.resume_if_exists": True,                 # l.399-408 AutoResume + RestoreConfig
    "model.config": "Llama31Config8B",               # l.399 LlamaModel(config=Llama31Config8B)
    "import.source": "hf://meta-llama/Llama-3.1-8B-Instruct",  # l.165-169 import_ckpt
    "export.target": "hf-peft",                      # l.556-561 export_ckpt
}

NEMO_DEFAULTS = {"image": "docker://nvcr.io/nvidia/nemo:25.04.01", "python": "python", "model_config": "Llama31Config8B",
                 "tensor_parallel": 1, "save_top_k": 2, "log_every_n_steps": 10, "num_workers": 8,
                 "distributed_optimizer": True}


def target_modules(hf_names: list[str]) -> list[str]:
    """NeMo LoRA targets for HF projection names; a fused group must be asked for whole."""
    unknown = [n for n in hf_names if n not in HF_TO_MEGATRON]
    if unknown:
        raise ValueError(f"train.target_modules: {unknown} have no NeMo equivalent (known: {sorted(HF_TO_MEGATRON)})")
    out = []
    for name in hf_names:
        mod = HF_TO_MEGATRON[name]
        need = FUSED.get(mod, {name})
        if not need <= set(hf_names):
            raise ValueError(f"train.target_modules: NeMo fuses {sorted(need)} into {mod}; list all of them or none "
                             f"(got {sorted(set(hf_names) & need)})")
        if mod not in out:
            out.append(mod)
    order = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    return sorted(out, key=order.index)


def recipe_values(settings: TrainSettings, nemo: dict | None = None, *, base: str = "",
                  dataset_root: str = "", restore_path: str = "", log_dir: str = "") -> dict:
    """Every value of the NeMo recipe, keyed by its dotted path in the ``nemo_run`` config."""
    n = {**NEMO_DEFAULTS, **(nemo or {})}
    if settings.precision == "fp32":
        raise ValueError("train.backend nemo runs bf16-mixed (the seed's precision); train.precision fp32 is not "
                         "supported there")
    if settings.lora_dropout and settings.lora_dropout >= 1:
        raise ValueError(f"train.lora_dropout must be < 1, got {settings.lora_dropout}")
    return {
        "peft.dim": settings.lora_rank,
        "peft.alpha": settings.lora_alpha,
        "peft.dropout": settings.lora_dropout,
        "peft.target_modules": target_modules(list(settings.target_modules)),
        "optim.config.optimizer": "adam",
        "optim.config.lr": settings.lr,
        "optim.config.weight_decay": settings.weight_decay,
        "optim.config.clip_grad": settings.grad_clip,
        "optim.config.use_distributed_optimizer": bool(n["distributed_optimizer"]),
        "optim.config.bf16": True,
        "optim.lr_scheduler.warmup_steps": int(settings.max_steps * settings.warmup_ratio),
        "optim.lr_scheduler.constant_steps": 0,
        "optim.lr_scheduler.min_lr": settings.min_lr,
        "data.seq_length": settings.max_length,
        "data.micro_batch_size": settings.micro_batch_size,
        "data.global_batch_size": settings.global_batch_size,
        "data.seed": settings.seed,
        "data.memmap_workers": 1,
        "data.num_workers": n["num_workers"],
        "data.pin_memory": True,
        "data.dataset_root": dataset_root,
        "data.order": settings.data_order,  # sequential: reasonflow's data module; shuffle: NeMo's own
        "trainer.max_steps": settings.max_steps,
        "trainer.devices": 1,
        "trainer.num_nodes": 1,
        "trainer.accelerator": "gpu",
        "trainer.log_every_n_steps": n["log_every_n_steps"],
        "trainer.limit_val_batches": 0,
        "trainer.val_check_interval": 0,
        "trainer.num_sanity_val_steps": 0,
        "trainer.use_distributed_sampler": False,
        "trainer.strategy.tensor_model_parallel_size": n["tensor_parallel"],
        "trainer.plugins.precision": "bf16-mixed",
        "log.ckpt.every_n_train_steps": settings.checkpoint_every,
        "log.ckpt.save_top_k": n["save_top_k"],
        "log.ckpt.save_last": True,
        "log.ckpt.monitor": "reduced_train_loss",
        "log.ckpt.save_on_train_epoch_end": True,
        "log.ckpt.save_optim_on_train_end": True,
        "log.log_dir": log_dir,
        "resume.resume_if_exists": True,
        "resume.restore_config.path": restore_path,
        "model.config": n["model_config"],
        "import.source": f"hf://{base}" if base else "",
        "export.target": "hf-peft",
    }
