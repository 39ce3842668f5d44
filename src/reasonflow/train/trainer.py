"""LoRA fine-tuning with transformers + PEFT: answer-only loss, packing, exact resume.

One optimizer step consumes ``global_batch_size`` samples (in the configured order),
split into micro-batches (packed rows, or padded groups of ``micro_batch_size``); the
loss is the mean over every answer token of the whole step (``num_items_in_batch``),
so gradient accumulation equals one large batch.

Checkpoints (``checkpoint_every`` steps, newest ``keep_last`` kept) hold the adapter,
optimizer, scheduler, RNG states, the number of samples consumed and the metrics rows so
far; they are written to a temporary folder and renamed, with a ``COMPLETE`` marker last.
On start the newest complete checkpoint is resumed, so a killed or requeued job continues
exactly. ``stop_at_step`` makes one job a segment of the run: it trains to that step,
leaves a checkpoint there and writes no adapter; the next job resumes from it.

SIGTERM or SIGUSR1 (what Slurm sends before a time limit, ``sbatch --signal``) make the run
finish the optimizer step in progress, write a complete checkpoint and metrics, log what
happened and exit with status ``STOPPED_EXIT`` (75, EX_TEMPFAIL): a rerun or a retry of the
job resumes from that checkpoint and ends with the adapter of an uninterrupted run. With
``stop_margin_s`` the run does the same on its own inside a Slurm job, once the job's end time
(:func:`job_end_time`) is nearer than the margin plus the slowest step so far: no signal has to
reach the trainer through the job script and Snakemake (which die on SIGUSR1).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from reasonflow.steps import step_dir
from reasonflow.train.data import (
    IGNORE, Example, JsonlDataset, best_fit, in_order, pad_batch, padded_row, sample_order, varlen_batch,
)
from reasonflow.train.settings import ALL_LINEAR, METRICS, PLAIN, RUN_CONTROL, SPEED_ONLY, TrainSettings  # noqa: F401


def lr_lambda(settings: TrainSettings):
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine from lr to min_lr."""
    warmup = max(1, round(settings.warmup_ratio * settings.max_steps))
    floor = settings.min_lr / settings.lr

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, settings.max_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _dtype(settings: TrainSettings, device: torch.device) -> torch.dtype:
    if settings.precision == "bf16" or (settings.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def build_model(base: str, settings: TrainSettings, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=_dtype(settings, device), attn_implementation="sdpa", local_files_only=os.path.isdir(base),
        token=None if os.path.isdir(base) else os.environ.get("HF_TOKEN"),
    )
    return prepare_model(model, settings, device)


def prepare_model(model, settings: TrainSettings, device: torch.device):
    """Wrap a causal LM with the LoRA adapter and apply the configured levers."""
    from peft import LoraConfig, get_peft_model

    model.config.use_cache = False
    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora).to(device)
    configure(model, settings)
    return model


def configure(model, settings: TrainSettings) -> dict:
    """(Re)apply the fast-path levers of ``settings`` to a PEFT model; returns what was applied."""
    from reasonflow.train import fast

    base = model.get_base_model()
    dev = next(model.parameters()).device
    backend = fast.register_attention(dev) if settings.attention == "varlen" else "sdpa"
    impl = fast.ATTENTION_NAME if settings.attention == "varlen" else "sdpa"
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation(impl)
    else:
        base.config._attn_implementation = impl
    patched = fast.apply_fused_modules(model, settings.fused_lora, settings.fused_norm_mlp)
    kernels = []
    if settings.compile_kernels or settings.compile_layers:
        kernels += ["ce_chunk"] if settings.fused_loss else []
        if settings.fused_norm_mlp and not settings.compile_layers:  # compiled layers fuse these themselves
            kernels += ["rms_fwd", "rms_bwd", "swiglu_fwd", "swiglu_bwd"]
    fast.use_compiled_kernels(kernels)
    layers = fast.set_checkpoint_layers(model, settings.gradient_checkpointing, settings.checkpoint_layers)
    compiled_layers = fast.compile_layers(model, settings.compile_layers)
    applied = {"attention": backend, "patched": patched,
               "checkpointed_layers": layers, "compiled_layers": compiled_layers,
               "compiled_kernels": kernels}
    print(f"train path: {json.dumps(applied, sort_keys=True)}", flush=True)
    return applied


def micro_batches(examples: list[Example], settings: TrainSettings, pad_id: int) -> list[dict]:
    """The micro-batches of one optimizer step.

    ``attention: varlen``: each micro-batch is ``micro_batch_size`` packed rows (or samples,
    without packing) flattened into one unpadded sequence with its sample boundaries.
    ``attention: sdpa``: padded rows of ``row_length`` (packing) or padded sample groups.
    """
    mb = settings.micro_batch_size
    if settings.packing:
        bins = (best_fit if settings.pack_strategy == "best_fit" else in_order)(examples, settings.row_length)
    else:
        bins = [[e] for e in examples]
    groups = [bins[i : i + mb] for i in range(0, len(bins), mb)]
    if settings.attention == "varlen":
        return [varlen_batch([e for b in g for e in b]) for g in groups]
    if not settings.packing:
        return [pad_batch([b[0] for b in g], pad_id) for g in groups]
    rows = [[padded_row(b, settings.row_length, pad_id) for b in g] for g in groups]
    return [{"input_ids": [r["input_ids"] for r in g], "labels": [r["labels"] for r in g],
             "position_ids": [r["position_ids"] for r in g], "real_tokens": sum(r["real_tokens"] for r in g)}
            for g in rows]


def forward_loss(model, batch: dict, num_items: int, device: torch.device,
                 settings: TrainSettings | None = None) -> torch.Tensor:
    """Sum of answer-token losses of ``batch`` divided by ``num_items`` (the step's answer tokens)."""
    if "bounds" in batch:
        from reasonflow.train.fast import varlen_loss

        s = settings or TrainSettings()
        return varlen_loss(model, batch, num_items, device, s.fused_loss, s.loss_chunk)
    tensors = {k: torch.tensor(v, device=device) for k, v in batch.items() if k != "real_tokens"}
    out = model(**tensors, use_cache=False, num_items_in_batch=num_items)
    return out.loss


def make_optimizer(params, settings: TrainSettings, device: torch.device):
    """AdamW; the single fused kernel on CUDA."""
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay,
                             fused=True if device.type == "cuda" else None)


def train_step(model, params, optimizer, scheduler, examples: list[Example], settings: TrainSettings, pad_id: int,
               device: torch.device, dp=None) -> dict:
    """One optimizer step over ``examples`` (one global batch): the stage's and the benchmark's code path.
    With ``dp`` (:class:`reasonflow.train.distributed.DataParallel`) this rank computes its share of the
    micro-batches and the gradient is summed over the ranks; loss and tokens are the whole step's."""
    batches = micro_batches(examples, settings, pad_id)
    num_items = sum(1 for e in examples for t in e.labels if t != IGNORE)
    if dp is not None:
        total = dp.backward(batches, num_items)
    else:
        total = torch.zeros((), device=device)
        for batch in batches:
            loss = forward_loss(model, batch, num_items, device, settings)
            loss.backward()
            total += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
    lr = scheduler.get_last_lr()[0]  # the rate this step uses
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total.item(), "grad_norm": grad_norm.item(), "lr": lr,
            "tokens": sum(b["real_tokens"] for b in batches), "rows": len(batches)}


def checkpoint_root(parent, base: str, training: str, settings: TrainSettings) -> Path:
    """Checkpoint folder for this exact run: settings, base model and training file identity.

    A changed config (or a re-merged training.jsonl) gets a fresh folder, so a job never
    resumes checkpoints of a different run; old folders stay for inspection. The speed-only
    switches (:data:`SPEED_ONLY`) and the stop margin are left out: the same run resumes across them.
    """
    import hashlib

    st = os.stat(training)
    run = {k: v for k, v in asdict(settings).items() if k not in SPEED_ONLY + RUN_CONTROL}
    ident = json.dumps({"settings": run, "base": os.path.abspath(base),
                        "training": [os.path.abspath(training), st.st_size, st.st_mtime_ns]}, sort_keys=True)
    return Path(parent) / hashlib.sha256(ident.encode()).hexdigest()[:16]


# Fault injection: the process SIGKILLs itself right after writing this step's checkpoint, as a
# preempted job would die; tests/test_train.py uses it to prove the resume is exact.
KILL_AFTER_CHECKPOINT = "RF_KILL_AFTER_CHECKPOINT"
SIGNAL_AFTER_STEP = "RF_SIGNAL_AFTER_STEP"  # fault injection: the run sends itself SIGUSR1 after step N
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_REASONS = (None, "TIME_LIMIT", "SIGTERM", "SIGUSR1")  # agreed over the ranks as the highest index
STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped on a signal after a complete checkpoint; run again to resume


def job_end_time(environ=None) -> float | None:
    """When the Slurm job running this process ends (epoch seconds); None outside Slurm or without a
    limit. Slurm 23.02+ exports ``SLURM_JOB_END_TIME``; older versions are asked with ``squeue``."""
    import subprocess
    from datetime import datetime

    environ = os.environ if environ is None else environ
    value = environ.get("SLURM_JOB_END_TIME", "")
    if value.isdigit() and int(value) > 0:
        return float(value)
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        return datetime.fromisoformat(out).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError):  # no squeue, or N/A / UNLIMITED
        return None


class TrainingStopped(SystemExit):
    """A stop signal ended the run after ``step``; ``checkpoint`` is complete. Exits with 75."""

    def __init__(self, signame: str, step: int, checkpoint: Path):
        super().__init__(STOPPED_EXIT)
        self.signame, self.step, self.checkpoint = signame, step, checkpoint


class _StopOnSignal:
    """Records the first stop signal instead of dying (main thread only); restores the handlers."""

    def __init__(self):
        self.signame: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signame is None:
            self.signame = signal.Signals(signum).name
            print(f"{self.signame} received: stopping after the current optimizer step", flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- checkpoints ------------------------------------------------------------------------------------

def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, scheduler, samples: int, keep_last: int,
                    metrics_rows: list[dict] | None = None) -> Path:
    """A complete checkpoint at ``step`` (adapter, optimizer, scheduler, RNG, samples consumed and the
    metrics rows so far: a job that resumes here keeps the whole curve even after Snakemake deleted a
    failed job's metrics.csv), written aside and renamed; keeps the newest ``keep_last``."""
    final = step_dir(ckpt_root, step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    if metrics_rows is not None:
        write_metrics(str(tmp / "metrics.csv"), metrics_rows)
    torch.save(
        {"step": step, "samples": samples, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "rng": _rng_state()},
        tmp / "state.pt",
    )
    (tmp / "COMPLETE").write_text(f"{step}\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in complete_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_snapshot(snapshots: str | Path, step: int, model) -> Path:
    """The adapter at ``step`` (PEFT format), written aside and renamed: a reader never sees half of it.
    A resumed run that passes ``step`` again writes the same adapter again."""
    final = step_dir(snapshots, step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    return sorted(p for p in ckpt_root.glob("step-*") if (p / "COMPLETE").is_file())


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, int]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter" / "adapter_model.safetensors")))
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return state["step"], state["samples"]


# -- the loop ---------------------------------------------------------------------------------------

def train(
    base: str, training: str, settings: TrainSettings, out_adapter: str | None, out_metrics: str, ckpt_root: str,
    tensorboard_dir: str | None = None, out_merged: str | None = None, device: str | None = None,
    snapshots: str | None = None,
) -> dict:
    """Train (or resume) to ``settings.max_steps`` and write the adapter and metrics; with
    ``settings.stop_at_step`` below max_steps, train only to that step, leave a complete checkpoint
    there and write the metrics but no adapter (one segment of a run; ``out_adapter`` may be None).
    ``snapshots``: the folder where ``settings.adapter_every`` keeps the adapters of those steps
    (:func:`reasonflow.steps.step_dir`; evaluated by ``evaluate.steps``)."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from reasonflow.train import distributed

    dev, parallel = distributed.init(device)
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=os.path.isdir(base))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = JsonlDataset(training, tokenizer, settings.max_length, settings.overlong)
    model = build_model(base, settings, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, settings, dev)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings))
    dp = distributed.DataParallel(model, dev, settings) if parallel else None
    rank0 = dp is None or dp.rank == 0
    if dp is not None:
        print(f"rank {dp.rank} of {dp.world} on {dev}", flush=True)

    ckpt = Path(ckpt_root)
    ckpt.mkdir(parents=True, exist_ok=True)
    if rank0:
        (ckpt / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    step = samples = 0
    metrics_from = out_metrics
    if resumable := complete_checkpoints(ckpt):
        step, samples = load_checkpoint(resumable[-1], model, optimizer, scheduler)
        print(f"resuming from {resumable[-1]} (step {step}, {samples} samples consumed)", flush=True)
        if (resumable[-1] / "metrics.csv").is_file():
            metrics_from = str(resumable[-1] / "metrics.csv")
    metrics_rows = read_metrics(metrics_from, upto=step)
    last = settings.stop_at_step if 0 < settings.stop_at_step < settings.max_steps else settings.max_steps
    if last < settings.max_steps:
        print(f"segment: training to step {last} of {settings.max_steps}", flush=True)
    order = sample_order(len(data), settings.data_order, settings.seed)
    for _ in range(samples):  # skip what the checkpoint already consumed (same order, same position)
        next(order)

    writer = None
    if tensorboard_dir and rank0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tensorboard_dir)
    model.train()
    bar = tqdm(total=settings.max_steps, initial=step, desc="train", unit="step", mininterval=5, disable=not rank0)
    def next_batch() -> tuple[list[Example], int]:
        examples, used = [], 0
        while len(examples) < settings.global_batch_size:
            ex = data.example(next(order))
            used += 1
            if ex is not None:
                examples.append(ex)
        return examples, used

    # the next step's rows are read and tokenized while this step runs on the device (same order)
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="rf-data")
    pending = pool.submit(next_batch)
    deadline = None
    if settings.stop_margin_s > 0 and (job_end := job_end_time()) is not None:
        deadline = job_end - settings.stop_margin_s
        print(f"the job ends at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job_end))}: stopping with a "
              f"checkpoint when less than {settings.stop_margin_s} s plus one step remain", flush=True)
    slowest = 0.0
    with _StopOnSignal() as stop:
        while step < last:
            t0 = time.perf_counter()
            examples, used = pending.result()
            if step + 1 < last:
                pending = pool.submit(next_batch)
            out = train_step(model, params, optimizer, scheduler, examples, settings, pad_id, dev, dp)
            samples += used
            step += 1
            seconds = time.perf_counter() - t0
            row = {"step": step, "loss": out["loss"], "lr": out["lr"], "samples": samples, "tokens": out["tokens"],
                   "tokens_per_s": out["tokens"] / seconds, "memory_mb": _memory_mb(dev), "grad_norm": out["grad_norm"]}
            metrics_rows.append(row)
            if writer:
                for k in ("loss", "lr", "tokens_per_s", "grad_norm"):
                    writer.add_scalar(f"train/{k}", row[k], step)
            bar.set_postfix(loss=f"{out['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if os.environ.get(SIGNAL_AFTER_STEP) == str(step):  # fault injection for the signal test
                os.kill(os.getpid(), signal.SIGUSR1)
            slowest = max(slowest, seconds)
            if deadline is not None and stop.signame is None and step < last and time.time() + slowest > deadline:
                stop.signame = "TIME_LIMIT"
                print(f"TIME_LIMIT: {max(0.0, deadline - time.time() + settings.stop_margin_s):.0f} s left in the "
                      f"job, the slowest step took {slowest:.1f} s: stopping after step {step}", flush=True)
            if dp is not None:  # every rank stops after the same step: the strongest reason of any rank
                stop.signame = STOP_REASONS[dp.agree(STOP_REASONS.index(stop.signame))]
            if rank0 and snapshots and settings.adapter_every and step % settings.adapter_every == 0 \
                    and step < settings.max_steps:
                save_snapshot(snapshots, step, model)
            saved = None
            if rank0 and (step % settings.checkpoint_every == 0 or step == last):
                saved = save_checkpoint(ckpt, step, model, optimizer, scheduler, samples, settings.keep_last,
                                        metrics_rows)
                write_metrics(out_metrics, metrics_rows)
                if os.environ.get(KILL_AFTER_CHECKPOINT) == str(step):  # fault injection for the resume test
                    os.kill(os.getpid(), signal.SIGKILL)
            if stop.signame and step < last:
                saved = saved or step_dir(ckpt, step)
                if rank0:
                    if not (saved / "COMPLETE").is_file():
                        save_checkpoint(ckpt, step, model, optimizer, scheduler, samples, settings.keep_last,
                                        metrics_rows)
                        write_metrics(out_metrics, metrics_rows)
                    if dp is not None:  # what the launcher reports, since torchrun only says "failed"
                        (ckpt / distributed.STOPPED_MARKER).write_text(json.dumps(
                            {"signame": stop.signame, "step": step, "checkpoint": str(saved)}) + "\n")
                if dp is not None:
                    dp.barrier()
                pending.cancel()
                pool.shutdown(wait=True)
                bar.close()
                print(f"{stop.signame}: stopped after step {step} of {settings.max_steps} with a complete checkpoint "
                      f"{saved}; exit status {STOPPED_EXIT}: run the job again (Snakemake retries it) to resume",
                      flush=True)
                raise TrainingStopped(stop.signame, step, saved)
    pool.shutdown(wait=True)
    bar.close()
    if writer:
        writer.close()
    if dp is not None:
        dp.barrier()  # rank 0's last checkpoint is complete before any rank reports the end
    if not rank0:
        return {"rank": dp.rank, "steps": step}
    write_metrics(out_metrics, metrics_rows)
    if step < settings.max_steps:  # a segment: its checkpoint at `last` is what the next job resumes from
        summary = {"segment_end": step, "max_steps": settings.max_steps, "samples": samples,
                   "checkpoint": str(complete_checkpoints(ckpt)[-1]),
                   "final_loss": metrics_rows[-1]["loss"] if metrics_rows else None}
        print(json.dumps(summary), flush=True)
        return summary
    model.save_pretrained(out_adapter)
    if out_merged:
        model.merge_and_unload().save_pretrained(out_merged)
        tokenizer.save_pretrained(out_merged)
    summary = {"steps": step, "samples": samples, "rows": len(data), "truncated": data.truncated,
               "dropped_overlong": data.dropped, "final_loss": metrics_rows[-1]["loss"] if metrics_rows else None}
    print(json.dumps(summary), flush=True)
    return summary


def _memory_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_metrics(path: str, upto: int) -> list[dict]:
    """Rows of ``metrics.csv`` up to step ``upto``. Empty cells (older files) and ``nan`` (what the NeMo
    backend does not measure) read as nan; counts stay integers (8, not 8.0, when written back)."""
    if not os.path.exists(path):
        return []
    counts = ("step", "samples", "tokens")

    def value(key: str, cell: str) -> float | int:
        x = float(cell) if cell != "" else math.nan
        return int(x) if key in counts and math.isfinite(x) else x

    with open(path, newline="") as fh:
        return [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(fh) if int(r["step"]) <= upto]


def write_metrics(path: str, rows: list[dict]) -> None:
    """``metrics.csv`` in the METRICS columns, replaced atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_loss(metrics_csv: str, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv, upto=10**12)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss (answer tokens)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="gray", alpha=0.5, label="lr")
    ax2.set_ylabel("learning rate")
    ax.set_title("LoRA training")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100, metadata={"Software": None})
    plt.close(fig)
