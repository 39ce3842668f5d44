"""Packed-sample causal attention kernels on one GPU: FlashAttention-2 varlen vs FlashAttention-4 vs cuDNN.

Rows of up to 8192 tokens packed best-fit from sample lengths log-uniform in [256, 8192]
(the training benchmark's workload), Llama-3.1-8B attention geometry (32 query heads,
8 KV heads, head dim 128), bf16, forward + backward. Prints per kernel: output and gradient
error against FlashAttention, median ms per row, TFLOP/s (causal, within samples), and the
cost of the first call on a new shape (cuDNN builds an execution plan per shape). FlashAttention-4
(``fa4-varlen``, GQA native, through the training stage's custom ops) is measured where
``flash-attn-4`` is installed.

    python bench/attention_kernels.py [--rows 24] [--ragged]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from reasonflow.train.data import best_fit  # noqa: E402

H, HKV, D = 32, 8, 128


class _Len:
    """What best_fit needs of an example: its length."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def rows(n_rows: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out: list[list[int]] = []
    while len(out) < n_rows:
        lens = [_Len(int(math.exp(rng.uniform(math.log(256), math.log(8192))))) for _ in range(16)]
        out += [[len(e) for e in b] for b in best_fit(lens, 8192)]
    return out[:n_rows]


def _expand_kv(q, k, v):
    """Neither cuDNN path takes GQA: share each KV head with its query group."""
    rep = q.shape[1] // k.shape[1]
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def cudnn_ragged(q, k, v, cu, max_len: int, scale):
    """cuDNN's ragged (cu_seqlens) fused attention, the path torch.nn.attention.varlen leaves disabled."""
    k, v = _expand_kv(q, k, v)
    out = torch.ops.aten._cudnn_attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), None, cu, cu,
                                                  max_len, max_len, True, 0.0, True, False, scale=scale)
    return out[0]


def cudnn_per_sample(q, k, v, bounds, scale, multiple: int = 128):
    """One cuDNN SDPA call per sample, each right-padded to a multiple of 128 (exact under causality)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    k, v = _expand_kv(q, k, v)
    outs = []
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        for s, e in zip(bounds[:-1], bounds[1:]):
            n = e - s
            pad = -n % multiple
            qs, ks, vs = (torch.nn.functional.pad(x[s:e], (0, 0, 0, 0, 0, pad)).transpose(0, 1)[None]
                          for x in (q, k, v))
            o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
            outs.append(o[0].transpose(0, 1)[:n])
    return torch.cat(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--ragged", action="store_true", help="also cuDNN's ragged path (fails here: see TRAINING_SPEED.md)")
    args = ap.parse_args()
    from reasonflow.train import fast

    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    scale = 1 / math.sqrt(D)
    varlen_attn, causal, _ = fast._torch_varlen()  # what the training stage's `attention: varlen` calls
    kernels = {"flash-varlen": lambda q, k, v, cu, m: varlen_attn(q, k, v, cu, cu, m, m, **causal),
               "cudnn-per-sample": lambda q, k, v, cu, m: cudnn_per_sample(q, k, v, cu.tolist(), scale)}
    from reasonflow.train import fa4

    if fa4.available():
        print(f"flash-attn-4 {fa4.available()}")
        kernels["fa4-varlen"] = lambda q, k, v, cu, m: fa4.varlen_attention(q, k, v, cu, m, scale)
    if args.ragged:
        kernels["cudnn-ragged"] = lambda q, k, v, cu, m: cudnn_ragged(q, k, v, cu, m, scale)
    results = {name: [] for name in kernels}
    first = {name: [] for name in kernels}
    errs = {name: [] for name in kernels}
    g = torch.Generator(device="cpu").manual_seed(0)
    for i, lens in enumerate(rows(args.rows, 1)):
        t = sum(lens)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
        max_len = max(lens)
        base = [torch.randn(t, h, D, generator=g).to(dev, torch.bfloat16) for h in (H, HKV, HKV)]
        dout = torch.randn(t, H, D, generator=g).to(dev, torch.bfloat16)
        flops = sum(4 * H * D * n * n / 2 for n in lens) * 3.5  # fwd (QK, PV; causal half) + bwd 2.5x
        ref = None
        for name, fn in kernels.items():
            q, k, v = (x.clone().requires_grad_() for x in base)
            times = []
            for rep in range(4):
                for x in (q, k, v):
                    x.grad = None
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = fn(q, k, v, cu, max_len)
                out.backward(dout)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            first[name].append(times[0])
            results[name].append((statistics.median(times[1:]), flops))
            got = [out.float(), q.grad.float(), k.grad.float(), v.grad.float()]
            if ref is None:
                ref = got
            errs[name].append(max(((a - b).norm() / b.norm()).item() for a, b in zip(got, ref)))
        if i == 0:
            print(f"row 0: {len(lens)} samples, {t} tokens, max {max_len}")
    print(f"\n{'kernel':<14}{'ms/row':>8}{'TFLOP/s':>9}{'first call ms':>15}{'max rel err':>13}")
    for name in kernels:
        ms = statistics.median(r[0] for r in results[name]) * 1e3
        tf = sum(r[1] for r in results[name]) / sum(r[0] for r in results[name]) / 1e12
        fc = statistics.median(first[name]) * 1e3
        print(f"{name:<14}{ms:>8.2f}{tf:>9.0f}{fc:>15.1f}{max(errs[name]):>13.2e}")


if __name__ == "__main__":
    main()
