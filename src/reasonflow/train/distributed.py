"""Data-parallel LoRA training on every GPU of one node (``train.gpus``), on PyTorch distributed.

What it guarantees:

- **Same samples, same result as one process.** Every rank reads the same global batch in the
  configured order and packs it the same way (:func:`reasonflow.train.trainer.micro_batches`); each
  rank then computes its share of the step's micro-batches (:func:`share`, balanced by real tokens),
  with the loss divided by the answer tokens of the *whole* step. DistributedDataParallel sums the
  ranks' LoRA gradients (its mean, times the world size), once per optimizer step (``no_sync`` on all
  but a rank's last micro-batch), so clipping, AdamW and the scheduler see the one-process gradient up
  to the order of float additions, and every rank keeps identical weights. The loss of a step is
  summed over the ranks.
- **Only rank 0 writes** checkpoints, snapshots, metrics, TensorBoard and the adapter. A checkpoint
  holds nothing rank-specific, so a run resumes with any number of processes (its identity ignores
  ``train.gpus``, a speed-only switch).
- **Stops are collective.** A stop signal or the job's time limit on any rank stops every rank after
  the same step: rank 0 writes the checkpoint and :data:`STOPPED_MARKER`; the launcher turns the
  workers' exit into the usual status 75 (``torchrun`` itself reports only "failed").
- **Launching** is torchrun's (``python -m torch.distributed.run --standalone``, one node): NCCL on
  GPUs, gloo on the CPU (tests). :func:`run` starts it when ``settings.gpus > 1`` and the process is not
  already a torchrun worker, and otherwise trains in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

STOPPED_MARKER = "stopped.json"  # in the checkpoint folder: rank 0's record of a collective stop


def in_worker() -> bool:
    """Whether this process is one rank of a torchrun job with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def share(sizes: list[int], world: int) -> list[list[int]]:
    """Indices of the step's micro-batches per rank: largest first to the least loaded rank (ties: lower
    index), each rank's list in the step's order. Deterministic, the same on every rank."""
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += sizes[i]
    return [sorted(x) for x in out]


class _StepLoss(torch.nn.Module):
    """The trainer's micro-batch loss as a module, so that DDP's forward wraps it (the fast path's
    fused loss calls the decoder directly, not the model's forward)."""

    def __init__(self, model, device: torch.device, settings):
        super().__init__()
        self.model, self.device, self.settings = model, device, settings

    def forward(self, batch: dict, num_items: int) -> torch.Tensor:
        from reasonflow.train.trainer import forward_loss

        return forward_loss(self.model, batch, num_items, self.device, self.settings)


class DataParallel:
    """This rank's part of a torchrun job: its process group, rank, device and the DDP-wrapped loss."""

    def __init__(self, model, device: torch.device, settings):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.dist, self.device = dist, device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        module = _StepLoss(model, device, settings)
        # frozen base weights and buffers are identical on every rank (same checkpoint): neither broadcast
        # at the start nor synced later; only the LoRA weights get buckets
        frozen = [f"model.{n}" for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [f"model.{n}" for n, _ in model.named_buffers()]
        DDP._set_params_and_buffers_to_ignore_for_model(module, frozen)
        self.ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                       gradient_as_bucket_view=True)

    def backward(self, batches: list[dict], num_items: int) -> torch.Tensor:
        """Forward and backward of this rank's share of ``batches``; gradients summed over the ranks.
        Returns the step's loss (all ranks)."""
        mine = share([b["real_tokens"] for b in batches], self.world)[self.rank]
        # a rank without a micro-batch still joins the gradient all-reduce: any batch, weight zero
        work = [(batches[i], 1.0) for i in mine] or [(batches[0], 0.0)]
        total = torch.zeros((), device=self.device)
        for k, (batch, weight) in enumerate(work):
            with self.ddp.no_sync() if k < len(work) - 1 else nullcontext():
                loss = self.ddp(batch, num_items)
                (loss * (weight * self.world)).backward()  # DDP averages: the world size makes it a sum
            total += loss.detach() * weight
        self.dist.all_reduce(total)
        return total

    def agree(self, value: int) -> int:
        """The largest of the ranks' ``value`` (a stop reason's index), on every rank."""
        t = torch.tensor([value], device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())

    def barrier(self) -> None:
        self.dist.barrier()


def init(device: str | None) -> tuple[torch.device, bool]:
    """The device of this process and whether it is a data-parallel rank (process group started)."""
    if not in_worker():
        return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), False
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return (torch.device("cuda", local) if cuda else torch.device("cpu")), True


def torchrun(n: int) -> list[str]:
    """The launcher's command prefix: torchrun with ``n`` processes on this node (append the module
    (``-m name``) or script and its arguments)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={n}"]


def run(base: str, training: str, settings, out_adapter: str | None, out_metrics: str, ckpt_root: str,
        tensorboard_dir: str | None = None, out_merged: str | None = None, device: str | None = None,
        snapshots: str | None = None, threads: int | None = None) -> dict:
    """Train with ``settings.gpus`` processes: in this process for one (or inside a torchrun worker),
    else under ``torchrun --standalone --nproc-per-node N`` on this node, waiting for it. Same outputs,
    the same summary, and the same exit 75 after a stop (:class:`~reasonflow.train.trainer.TrainingStopped`)."""
    from reasonflow.train.trainer import TrainingStopped, train

    n = settings.gpus
    if n <= 1 or in_worker():
        return train(base, training, settings, out_adapter, out_metrics, ckpt_root, tensorboard_dir=tensorboard_dir,
                     out_merged=out_merged, device=device, snapshots=snapshots)
    if device is None and torch.cuda.is_available() and torch.cuda.device_count() < n:
        raise ValueError(f"train.gpus is {n} but this node has {torch.cuda.device_count()} GPU(s)")
    ckpt = Path(ckpt_root)
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / STOPPED_MARKER).unlink(missing_ok=True)
    summary = ckpt / f"summary-{os.getpid()}.json"
    args = ["--base", base, "--training", training, "--settings", json.dumps(asdict(settings)),
            "--metrics", out_metrics, "--checkpoints", str(ckpt), "--summary", str(summary)]
    for flag, value in (("--adapter", out_adapter), ("--tensorboard", tensorboard_dir), ("--merged", out_merged),
                        ("--device", device), ("--snapshots", snapshots)):
        if value:
            args += [flag, value]
    cmd = [*torchrun(n), "-m", "reasonflow.train", *args]
    # torchrun would give each worker one CPU thread: share the job's threads instead
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (threads or os.cpu_count() or 1) // n))}
    print(f"data parallel: {n} processes ({'NCCL' if torch.cuda.is_available() else 'gloo'}): {' '.join(cmd[:7])} ...",
          flush=True)
    t0 = time.time()
    rc = subprocess.run(cmd, env=env).returncode
    marker = ckpt / STOPPED_MARKER
    if marker.is_file() and marker.stat().st_mtime >= t0:
        info = json.loads(marker.read_text())
        raise TrainingStopped(info["signame"], info["step"], Path(info["checkpoint"]))
    if rc != 0:
        raise RuntimeError(f"torchrun with {n} processes failed (exit status {rc}); see the workers' output above")
    out = json.loads(summary.read_text())
    summary.unlink()
    return out
