"""The real NeMo 2 recipe (nemo_toolkit 2.7, CPU) built from our config: the seed's values.

Runs in .venv-nemo (`make test` runs it after the main suite; `make test-nemo` alone).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
nemo = pytest.importorskip("nemo", reason="the NeMo test environment (.venv-nemo) runs these")

from reasonflow.train import nemo_backend as nb  # noqa: E402
from reasonflow.train.nemo_recipe import SEED, recipe_values  # noqa: E402
from reasonflow.train.settings import TrainSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RECIPE_KEYS = [k for k in SEED if not k.startswith(("import.", "export."))]


def _values(tmp_path, **change):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = dataclasses.replace(TrainSettings.from_config(cfg["train"]), **change)
    return recipe_values(settings, cfg["train"]["nemo"], base=cfg["model"]["base"], dataset_root=str(tmp_path / "d"),
                         restore_path=str(tmp_path / "imported"), log_dir=str(tmp_path / "run"))


@pytest.fixture(scope="module", autouse=True)
def workarounds():
    return nb.no_te_workarounds()


def test_recipe_from_the_real_config_has_every_seed_value(tmp_path):
    recipe = nb.build_recipe(_values(tmp_path))
    back = nb.read_back(recipe)
    assert {k: back[k] for k in RECIPE_KEYS} == {k: SEED[k] for k in RECIPE_KEYS}
    assert recipe.__fn_or_cls__.__name__ == "finetune"
    assert back["resume.restore_config.path"] == str(tmp_path / "imported")
    assert back["data.dataset_root"] == str(tmp_path / "d") and back["data.order"] == "sequential"


@pytest.mark.parametrize("change, key, want", [
    ({"lr": 3e-4}, "optim.config.lr", 3e-4),
    ({"lora_rank": 32, "lora_alpha": 64}, "peft.dim", 32),
    ({"max_steps": 400}, "optim.lr_scheduler.warmup_steps", 20),
    ({"max_steps": 400}, "trainer.max_steps", 400),
    ({"global_batch_size": 64}, "data.global_batch_size", 64),
    ({"max_length": 2048}, "data.seq_length", 2048),
    ({"weight_decay": 0.01}, "optim.config.weight_decay", 0.01),
    ({"grad_clip": 0.5}, "optim.config.clip_grad", 0.5),
    ({"checkpoint_every": 25}, "log.ckpt.every_n_train_steps", 25),
    ({"data_order": "shuffle"}, "data.order", "shuffle"),
])
def test_recipe_follows_config_changes(tmp_path, change, key, want):
    assert nb.read_back(nb.build_recipe(_values(tmp_path, **change)))[key] == want


def test_recipe_objects_build(tmp_path):
    import fiddle as fdl

    recipe = nb.build_recipe(_values(tmp_path))
    optim = fdl.build(recipe.optim)
    assert optim.config.lr == 1e-4 and optim.config.adam_beta2 == 0.999 and optim.lr_scheduler.min_lr == 1e-5
    data = fdl.build(recipe.data)
    assert type(data).__name__ == "OrderedFineTuningDataModule" and data.train_path == tmp_path / "d" / "training.jsonl"
    model_cfg = fdl.build(recipe.model.config)  # Llama31Config8B: needs the no-TE workaround on this machine
    assert (model_cfg.num_layers, model_cfg.hidden_size, model_cfg.num_query_groups) == (32, 4096, 8)
    if not nb.have_te():
        assert model_cfg.apply_rope_fusion is False
    assert recipe.peft.dim == 64 and recipe.peft.target_modules == SEED["peft.target_modules"]


def test_sequential_order_keeps_the_file_order_and_shuffle_is_seeded(tmp_path):
    import fiddle as fdl

    seq = fdl.build(nb.build_recipe(_values(tmp_path)).data)
    mapping = seq.sample_mapping(5, 12)
    assert [int(mapping[i][0]) for i in range(12)] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    shuf = fdl.build(nb.build_recipe(_values(tmp_path, data_order="shuffle")).data)
    first = [int(shuf.sample_mapping(50, 50)[i][0]) for i in range(50)]
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first == [int(shuf.sample_mapping(50, 50)[i][0]) for i in range(50)]  # a pure function of the seed
    other = fdl.build(nb.build_recipe(_values(tmp_path, data_order="shuffle", seed=7)).data)
    assert [int(other.sample_mapping(50, 50)[i][0]) for i in range(50)] != first


def test_lora_attaches_to_a_tiny_megatron_llama_without_te(workarounds):
    """The LoRA transform on a real (tiny) Megatron GPT model on the CPU, after the no-TE workarounds."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from nemo.collections import llm
    from nemo.collections.llm import fn

    if not dist.is_initialized():
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
        dist.init_process_group("gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    try:
        cfg = llm.Llama31Config8B(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                                  num_query_groups=2, seq_length=32, use_cpu_initialization=True)

        class Tok:
            vocab_size = 256

        model = cfg.configure_model(Tok())
        model.freeze = lambda: [p.requires_grad_(False) for p in model.parameters()]
        model.walk = lambda f: fn.walk(model, f)
        lora = llm.peft.LoRA(dim=4, alpha=8)
        out = lora(model)
        adapters = {n.split(".")[-2] for n, _ in out.named_modules() if n.endswith(".adapter")}
        assert adapters == set(SEED["peft.target_modules"])
        trainable = sum(p.numel() for p in out.parameters() if p.requires_grad)
        assert 0 < trainable < sum(p.numel() for p in out.parameters())
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def test_cli_prepares_the_dataset_root(tmp_path):
    from reasonflow.train.nemo_cli import prepare_dataset_root

    training = tmp_path / "training.jsonl"
    training.write_text(json.dumps({"input": "a", "output": "b"}) + "\n")
    prepare_dataset_root(str(tmp_path / "root"), str(training))
    link = tmp_path / "root" / "training.jsonl"
    assert link.is_symlink() and link.resolve() == training.resolve()
    assert (tmp_path / "root" / "validation.jsonl").read_text().strip() == training.read_text().strip()


def test_metrics_callback_keeps_rows_up_to_the_resumed_step(tmp_path):
    """A resumed NeMo run keeps the metrics of the steps its checkpoint covers, then appends."""
    import math
    from types import SimpleNamespace

    import torch

    from reasonflow.train.nemo_data import MetricsCSV
    from reasonflow.train.trainer import read_metrics, write_metrics

    path = tmp_path / "metrics.csv"
    nan = math.nan
    write_metrics(str(path), [{"step": s, "loss": 2.0 / s, "lr": 1e-4, "samples": 4 * s, "tokens": nan,
                               "tokens_per_s": nan, "memory_mb": nan, "grad_norm": nan} for s in (1, 2, 3)])
    cb = MetricsCSV(str(path))
    cb.on_train_start(SimpleNamespace(global_step=2), None)  # the checkpoint was taken after step 2
    metrics = {"reduced_train_loss": torch.tensor(0.5), "lr": torch.tensor(2e-5), "consumed_samples": torch.tensor(12)}
    cb.on_train_batch_end(SimpleNamespace(global_step=3, callback_metrics=metrics), None, None, None, 0)
    rows = read_metrics(str(path), upto=10**9)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["loss"] == 1.0 and rows[2]["loss"] == 0.5 and rows[2]["samples"] == 12
    assert math.isnan(rows[2]["tokens"]) and math.isclose(rows[2]["lr"], 2e-5, rel_tol=1e-6)
