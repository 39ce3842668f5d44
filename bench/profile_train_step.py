"""Where the optimized training step spends its GPU time (one GPU, one command).

Same workload as ``bench/train_throughput.py`` (Llama-3.1-8B geometry, LoRA r64 on all
linear layers, packed samples log-uniform in [256, 8192]), the config.yaml fast path, and
``torch.profiler`` over a few optimizer steps after warm-up. Prints GPU kernel time by
category (GEMM, attention, compiled Triton kernels, other elementwise, copies, optimizer),
the top kernels, the share of wall time the GPU sat idle, and dynamo's recompile counters.

    python bench/profile_train_step.py [--global-batch 16] [--steps 2] [--set fused_norm_mlp=false]
    python bench/profile_train_step.py --who "Memcpy DtoD"   # ... and which host ops launch those kernels

With ``--who`` the profiler also records input shapes; on the H100 that run's busy total came out
doubled (192% of wall), so take the category table from a run without it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from train_throughput import LLAMA_8B, TINY, random_lora_model, synth_examples  # noqa: E402

from reasonflow.train.trainer import TrainSettings, train_step  # noqa: E402

CATEGORIES = (  # first match wins; kernel names as cuBLAS / FlashAttention / inductor / aten spell them
    ("attention", ("flash", "fmha", "attn")),
    ("optimizer", ("multi_tensor", "adam", "foreach")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_", "splitk")),
    ("compiled (triton)", ("triton_",)),
    ("copy / cast", ("copy", "memcpy", "memset", "cat", "fill")),
    ("reduction", ("reduce", "norm", "sum")),
    ("elementwise (aten)", ("elementwise", "vectorized", "unrolled", "index", "scatter", "gather")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def parse_overrides(items: list[str]) -> dict:
    """``FIELD=VALUE`` pairs: VALUE as JSON (true, 8192, ...), else as a plain string (sdpa)."""
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(TrainSettings)}:
            raise SystemExit(f"--set {item!r}: {key!r} is not a TrainSettings field")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def who(prof, substring: str, busy: float, top: int) -> None:
    """Device time of the kernels named like ``substring``, by the chain of host ops that launched them."""
    by_chain: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        hits = [k for k in getattr(ev, "kernels", []) if substring in k.name]
        if not hits:
            continue
        chain, shapes, e = [], "", ev
        while e is not None and len(chain) < 6:
            if e.name.startswith("cu") and not chain:  # the runtime call (cudaMemcpyAsync, cuLaunch…): its caller
                e = e.cpu_parent
                continue
            if not shapes and e.input_shapes:
                shapes = str(e.input_shapes)[:120]
            chain.append(e.name[:60])
            e = e.cpu_parent
        key = " < ".join(chain) + (f"  shapes {shapes}" if shapes else "")
        by_chain[key][0] += sum(k.duration for k in hits)
        by_chain[key][1] += len(hits)
    print(f"\nkernels like {substring!r} by launching host op (innermost first)")
    for key, (us, n) in sorted(by_chain.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{us / 1e6 / busy:>6.1%} {us / 1e3:>9.1f} ms {n:>6}x  {key}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small model, CPU-friendly smoke run")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="profiled optimizer steps")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a TrainSettings field")
    ap.add_argument("--who", default="", metavar="SUBSTRING", help="also name the host ops (chain of enclosing "
                    "ops, input shapes) that launch the kernels whose name contains SUBSTRING, e.g. 'Memcpy DtoD'")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaConfig

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = LlamaConfig(**(TINY if args.tiny else LLAMA_8B))
    lo, hi, max_len = (32, 1024, 1024) if args.tiny else (256, 8192, 8192)
    fast = dict(gradient_checkpointing=False, attention="varlen", fused_loss=True, fused_lora=True,
                fused_norm_mlp=True, compile_kernels=True, compile_layers=True, pack_strategy="best_fit")
    s = TrainSettings(precision="bf16", max_length=max_len, global_batch_size=args.global_batch, max_steps=2000,
                      warmup_ratio=0.05, **{**fast, **parse_overrides(args.set)})
    model, params, opt, sched = random_lora_model(cfg, s, dev)
    pool = synth_examples((args.warmup + args.steps) * s.global_batch_size, cfg.vocab_size, lo, hi, seed=1)
    batches = [pool[i * s.global_batch_size : (i + 1) * s.global_batch_size] for i in range(args.warmup + args.steps)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    for exs in batches[: args.warmup]:
        train_step(model, params, opt, sched, exs, s, 0, dev)
    sync()
    print(f"warm-up: {args.warmup} steps in {time.perf_counter() - t:.0f} s", flush=True)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    tokens, wall = 0, 0.0
    with profile(activities=activities, record_shapes=bool(args.who)) as prof:
        for exs in batches[args.warmup :]:
            sync()
            t = time.perf_counter()
            tokens += train_step(model, params, opt, sched, exs, s, 0, dev)["tokens"]
            sync()
            wall += time.perf_counter() - t
    by_cat: dict[str, float] = collections.defaultdict(float)
    by_kernel: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
        by_cat[category(ev.name)] += us
        by_kernel[ev.name][0] += us
        by_kernel[ev.name][1] += 1
    busy = sum(by_cat.values()) / 1e6
    print(f"\nprofiled {args.steps} steps: {tokens} real tokens in {wall:.2f} s = {tokens / wall:,.0f} tok/s "
          f"(profiler on); GPU busy {busy:.2f} s = {busy / wall:.1%} of wall")
    print(f"\n{'category':<22}{'GPU s':>8}{'share':>8}{'us/token':>10}")
    for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"{cat:<22}{us / 1e6:>8.3f}{us / 1e6 / busy:>8.1%}{us / tokens:>10.2f}")
    print(f"\ntop {args.top} kernels")
    for name, (us, n) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{us / 1e6 / busy:>6.1%} {us / 1e3:>9.1f} ms {n:>6}x  [{category(name)}] {name[:110]}")
    if args.who:
        who(prof, args.who, busy, args.top)
    from torch._dynamo.utils import counters

    stats = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break")}
    print(f"\ndynamo counters: {json.dumps(stats)[:1500]}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "profile_train_step.json"), "w") as fh:
            json.dump({"tokens": tokens, "wall_s": wall, "gpu_busy_s": busy, "by_category_us": by_cat,
                       "top_kernels": sorted(((k, v[0], v[1]) for k, v in by_kernel.items()),
                                             key=lambda r: -r[1])[:60], "settings": dataclasses.asdict(s)},
                      fh, indent=1)


if __name__ == "__main__":
    main()
