"""``train.backend: nemo``: the seed's NeMo 2 recipe (``nemo_toolkit`` 2.7, ``nemo.collections.llm``).

Needs NeMo (the NeMo container on a cluster, ``.venv-nemo`` for the CPU tests); the values come
from :func:`reasonflow.train.nemo_recipe.recipe_values`. Three steps; the import is a Snakemake rule
of its own (``nemo_import``), so a changed LoRA value never re-imports the base model, and the
``train`` rule runs the other two:

1. :func:`import_base`: HF checkpoint -> NeMo checkpoint (``llm.import_ckpt``);
2. :func:`finetune`: ``llm.finetune`` with ``llm.peft.LoRA`` over ``training.jsonl``; resumes the
   newest checkpoint of its log folder (``AutoResume(resume_if_exists=True)``);
3. :func:`export_adapter`: the LoRA checkpoint -> HF PEFT (``llm.export_ckpt(target="hf-peft")``),
   so serving and evaluation are the same for both backends.

Without Transformer Engine (the CPU test env, a plain GPU image) NeMo 2.7.3 needs three
workarounds, applied by :func:`no_te_workarounds` and reported: the TE/apex-only fusions off in
every model config (``apply_rope_fusion``, ``persist_layer_norm``, ...), and two patches of its
LoRA transform, which otherwise tests modules against TE classes that are import placeholders.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

# recipe_values keys that are no attribute path of the built recipe (read back on their own, or not at all)
NOT_ATTRIBUTE_PATHS = ("model.config", "data.order", "import.source", "export.target")

# fusions that need Transformer Engine or apex kernels
NO_TE_OFF = ("apply_rope_fusion", "persist_layer_norm", "gradient_accumulation_fusion", "bias_activation_fusion",
             "masked_softmax_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion")


def have_te() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


class _Never:
    """A class nothing is an instance of (stands in for an optional package's class in isinstance)."""


def no_te_workarounds() -> list[str]:
    """Make NeMo 2.7.3 run without its optional GPU extras; returns what was patched.

    - without ``nvidia_resiliency_ext``, ``NeMoLogger`` tests callbacks against a placeholder class
      (``UnavailableError`` on the first ``isinstance``);
    - without Transformer Engine: the TE/apex-only fusions, and NeMo's LoRA transform (see module doc).
    """
    done = []
    import nemo.lightning.nemo_logger as nemo_logger

    if not getattr(nemo_logger, "HAVE_RES", True):
        nemo_logger.lcp = types.SimpleNamespace(LocalCheckpointCallback=_Never)
        done.append("nemo_logger.lcp -> stub (no nvidia_resiliency_ext)")
    if have_te():
        return done
    import nemo.collections.llm.peft.lora as lora_mod
    import nemo.collections.llm.peft.utils as peft_utils
    from megatron.core.transformer.transformer_config import TransformerConfig

    lora_mod.te = types.SimpleNamespace(Linear=_Never, LayerNormLinear=_Never)
    peft_utils.HAVE_TE = False
    if not getattr(TransformerConfig.__post_init__, "_rf_no_te", False):
        original = TransformerConfig.__post_init__

        def post_init(self):  # TE/apex-only fusions off in every model config (the importer's too)
            for name in NO_TE_OFF:
                if hasattr(self, name):
                    setattr(self, name, False)
            original(self)

        post_init._rf_no_te = True
        TransformerConfig.__post_init__ = post_init
    return done + [f"{name}=False" for name in NO_TE_OFF] + ["peft.lora.te -> no-TE stub", "peft.utils.HAVE_TE=False"]


def _llm():
    from nemo.collections import llm

    if not hasattr(llm, "finetune"):  # nemo swallows import errors of llm.api and only logs them
        raise ImportError("nemo.collections.llm has no finetune: its api module failed to import "
                          "(look for 'Failed to import nemo.collections.llm' above; nvidia-modelopt missing?)")
    return llm


def build_recipe(values: dict, metrics_csv: str | None = None):
    """The ``nemo_run.Partial(llm.finetune, ...)`` of the seed notebook, filled from ``values``."""
    import nemo.lightning as nl
    import nemo_run as run
    from megatron.core.optimizer import OptimizerConfig
    from nemo.collections.llm.recipes.precision.mixed_precision import bf16_mixed
    from nemo.lightning.pytorch.optim import CosineAnnealingScheduler

    llm = _llm()
    from reasonflow.train.nemo_data import MetricsCSV, OrderedFineTuningDataModule

    v = values
    if v["model.config"] == "from_checkpoint":  # the imported checkpoint's own config (any Llama size)
        model = v["resume.restore_config.path"]
    else:  # the seed: LlamaModel(config=Llama31Config8B)
        model = run.Config(llm.LlamaModel, config=run.Config(getattr(llm, v["model.config"])))
    strategy = run.Config(nl.MegatronStrategy, tensor_model_parallel_size=v["trainer.strategy.tensor_model_parallel_size"])
    trainer = run.Config(
        nl.Trainer, devices=v["trainer.devices"], num_nodes=v["trainer.num_nodes"], max_steps=v["trainer.max_steps"],
        accelerator=v["trainer.accelerator"], strategy=strategy, plugins=bf16_mixed(),
        log_every_n_steps=v["trainer.log_every_n_steps"], limit_val_batches=v["trainer.limit_val_batches"],
        val_check_interval=v["trainer.val_check_interval"], num_sanity_val_steps=v["trainer.num_sanity_val_steps"],
        use_distributed_sampler=v["trainer.use_distributed_sampler"],
        **({"callbacks": [run.Config(MetricsCSV, path=metrics_csv)]} if metrics_csv else {}))
    data = run.Config(
        OrderedFineTuningDataModule, dataset_root=v["data.dataset_root"], seq_length=v["data.seq_length"],
        micro_batch_size=v["data.micro_batch_size"], global_batch_size=v["data.global_batch_size"],
        seed=v["data.seed"], memmap_workers=v["data.memmap_workers"], num_workers=v["data.num_workers"],
        pin_memory=v["data.pin_memory"], order=v["data.order"])
    ckpt = run.Config(
        nl.ModelCheckpoint, save_last=v["log.ckpt.save_last"], every_n_train_steps=v["log.ckpt.every_n_train_steps"],
        monitor=v["log.ckpt.monitor"], save_top_k=v["log.ckpt.save_top_k"],
        save_on_train_epoch_end=v["log.ckpt.save_on_train_epoch_end"],
        save_optim_on_train_end=v["log.ckpt.save_optim_on_train_end"])
    # a fixed name and version: a restarted job finds its own checkpoints (use_datetime_version=False)
    log = run.Config(nl.NeMoLogger, name="lora", log_dir=v["log.log_dir"], use_datetime_version=False, ckpt=ckpt,
                     wandb=None)
    optim = run.Config(
        nl.MegatronOptimizerModule,
        config=run.Config(OptimizerConfig, optimizer=v["optim.config.optimizer"], lr=v["optim.config.lr"],
                          weight_decay=v["optim.config.weight_decay"], clip_grad=v["optim.config.clip_grad"],
                          use_distributed_optimizer=v["optim.config.use_distributed_optimizer"],
                          bf16=v["optim.config.bf16"]),
        lr_scheduler=run.Config(CosineAnnealingScheduler, warmup_steps=v["optim.lr_scheduler.warmup_steps"],
                                constant_steps=v["optim.lr_scheduler.constant_steps"],
                                min_lr=v["optim.lr_scheduler.min_lr"]))
    resume = run.Config(nl.AutoResume, restore_config=run.Config(nl.RestoreConfig, path=v["resume.restore_config.path"]),
                        resume_if_exists=v["resume.resume_if_exists"])
    peft = llm.peft.LoRA(dim=v["peft.dim"], alpha=v["peft.alpha"], dropout=v["peft.dropout"],
                         target_modules=list(v["peft.target_modules"]))
    return run.Partial(llm.finetune, model=model, trainer=trainer, data=data,
                       log=log, optim=optim, resume=resume, peft=peft)


def read_back(recipe) -> dict:
    """The recipe's values under the keys of :func:`recipe_values` (what a test compares)."""
    from reasonflow.train.nemo_recipe import recipe_values
    from reasonflow.train.settings import TrainSettings

    out = {}
    for key in recipe_values(TrainSettings()):  # every key that is an attribute path of the run.Partial
        if key not in NOT_ATTRIBUTE_PATHS:
            obj = recipe
            for part in key.split("."):
                obj = getattr(obj, part)
            out[key] = list(obj) if isinstance(obj, (list, tuple)) else obj
    out["data.dataset_root"] = str(out["data.dataset_root"])
    out["model.config"] = (recipe.model.config.__fn_or_cls__.__name__ if not isinstance(recipe.model, (str, Path))
                           else "from_checkpoint")
    out["data.order"] = recipe.data.order
    return out


# -- the three steps --------------------------------------------------------------------------------

def import_base(values: dict, hf_dir: str, out: str) -> str:
    """HF model folder -> NeMo checkpoint (the seed's ``llm.import_ckpt``, from a local copy)."""
    llm = _llm()
    no_te_workarounds()
    name = values["model.config"]
    # the model class picks the importer; the importer derives the real config from the HF config.json
    cfg = (llm.Llama32Config1B if name == "from_checkpoint" else getattr(llm, name))()
    path = llm.import_ckpt(model=llm.LlamaModel(cfg), source=f"hf://{os.path.abspath(hf_dir)}", output_path=out,
                           overwrite=True)
    return str(path)


def finetune(values: dict, metrics_csv: str | None = None) -> str:
    """Run the recipe in this process (one GPU); returns the final checkpoint path."""
    import fiddle as fdl

    applied = no_te_workarounds()
    if applied:
        print(f"no Transformer Engine here: {applied}", flush=True)
    recipe = build_recipe(values, metrics_csv)
    return str(fdl.build(recipe)())


def newest_checkpoint(log_dir: str) -> Path:
    """The last checkpoint NeMo wrote under ``log_dir`` (``…/checkpoints/*-last`` preferred)."""
    ckpts = sorted(Path(log_dir).glob("**/checkpoints/*"), key=lambda p: p.stat().st_mtime)
    ckpts = [p for p in ckpts if p.is_dir()]
    if not ckpts:
        raise FileNotFoundError(f"no NeMo checkpoint under {log_dir}")
    last = [p for p in ckpts if p.name.endswith("-last")]
    return (last or ckpts)[-1]


def export_adapter(checkpoint: str, out: str) -> str:
    """NeMo LoRA checkpoint -> HF PEFT adapter folder (``adapter_config.json`` + safetensors)."""
    llm = _llm()
    _leave_training_process_group()  # the exporter loads on the CPU; a leftover NCCL group breaks it
    return str(llm.export_ckpt(path=Path(checkpoint), target="hf-peft", output_path=Path(out), overwrite=True))


def _leave_training_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
