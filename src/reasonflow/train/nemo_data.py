"""NeMo-side classes of the NeMo backend (import NeMo: the nemo env or container only).

``OrderedFineTuningDataModule``: NeMo's ``FineTuningDataModule`` with this project's training order.

NeMo's own module always draws a block-shuffled permutation with a fixed seed of 1 (its
``seed`` argument does not reach it), so the curriculum order of ``training.jsonl`` is lost.
Here ``order="sequential"`` reads the file in order, epoch after epoch, and ``"shuffle"``
draws NeMo's permutation with ``train.seed``. The class lives at module level so NeMo can
serialise it into a checkpoint's context.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from lightning.pytorch import Callback
from nemo.collections.llm.gpt.data.fine_tuning import FineTuningDataModule
from nemo.collections.llm.gpt.data.utils import _OnlineSampleMapping

from reasonflow.train.settings import METRICS
from reasonflow.train.trainer import read_metrics, write_metrics


class OrderedFineTuningDataModule(FineTuningDataModule):
    def __init__(self, *args, order: str = "sequential", **kwargs):
        if order not in ("sequential", "shuffle"):
            raise ValueError(f"train.data_order must be 'sequential' or 'shuffle', got {order!r}")
        super().__init__(*args, **kwargs)
        self.order = order

    def sample_mapping(self, dataset_size: int, num_samples: int) -> _OnlineSampleMapping:
        return _OnlineSampleMapping(dataset_size=dataset_size, num_samples=num_samples, block_size=dataset_size,
                                    seed=self.seed, shuffle=self.order == "shuffle")

    def train_dataloader(self):
        dataset = self._create_dataset(self.train_path, max_num_samples=self.max_train_samples, **self.dataset_kwargs)
        dataset.samples_mapping = self.sample_mapping(len(dataset.indexed_dataset), self.max_train_samples)
        return self._create_dataloader(dataset, mode="train")


class MetricsCSV(Callback):
    """One row per optimizer step in the trainer's ``metrics.csv`` columns (what the report plots).

    NeMo reports the loss as ``reduced_train_loss`` and the consumed samples; tokens, tokens/s
    and the gradient norm are not reported there (written as ``nan``). A resumed run keeps the
    rows up to its checkpoint's step and continues.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module):
        write_metrics(str(self.path), read_metrics(str(self.path), upto=trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics

        def val(key):
            v = m.get(key)
            return float(v) if v is not None else math.nan

        mem = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else math.nan
        row = {"step": trainer.global_step, "loss": val("reduced_train_loss"), "lr": val("lr"),
               "samples": val("consumed_samples"), "tokens": math.nan, "tokens_per_s": math.nan, "memory_mb": mem,
               "grad_norm": math.nan}
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=METRICS).writerow(row)
