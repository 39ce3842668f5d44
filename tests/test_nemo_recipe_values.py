"""train.backend nemo: our config -> the seed's NeMo recipe values (pure mapping, no NeMo needed).

tests/nemo/ builds the real NeMo recipe from these values in the NeMo environment.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO
from reasonflow.train.nemo_recipe import SEED, recipe_values, target_modules
from reasonflow.train.settings import TrainSettings


def _real():
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return TrainSettings.from_config(cfg["train"]), cfg["train"]["nemo"], cfg["model"]["base"]


def test_real_config_gives_every_seed_value():
    settings, nemo, base = _real()
    values = recipe_values(settings, nemo, base=base)
    assert {k: values[k] for k in SEED} == SEED


@pytest.mark.parametrize("change, key, want", [
    ({"lr": 2e-4}, "optim.config.lr", 2e-4),
    ({"lora_rank": 16}, "peft.dim", 16),
    ({"lora_alpha": 32}, "peft.alpha", 32),
    ({"max_steps": 500}, "optim.lr_scheduler.warmup_steps", 25),
    ({"warmup_ratio": 0.1}, "optim.lr_scheduler.warmup_steps", 200),
    ({"global_batch_size": 128}, "data.global_batch_size", 128),
    ({"max_length": 4096}, "data.seq_length", 4096),
    ({"checkpoint_every": 50}, "log.ckpt.every_n_train_steps", 50),
    ({"min_lr": 0.0}, "optim.lr_scheduler.min_lr", 0.0),
    ({"data_order": "shuffle"}, "data.order", "shuffle"),
    ({"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, "peft.target_modules", ["linear_qkv", "linear_proj"]),
])
def test_values_follow_the_config(change, key, want):
    settings, nemo, base = _real()
    assert recipe_values(dataclasses.replace(settings, **change), nemo, base=base)[key] == want


def test_unmappable_values_are_named():
    with pytest.raises(ValueError, match=r"fuses \['k_proj', 'q_proj', 'v_proj'\] into linear_qkv"):
        target_modules(["q_proj", "o_proj"])
    with pytest.raises(ValueError, match="w1"):
        target_modules(["w1"])
    with pytest.raises(ValueError, match="fp32"):
        recipe_values(TrainSettings(precision="fp32"))
