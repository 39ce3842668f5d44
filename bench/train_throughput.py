"""Training throughput of the training stage's own step (``reasonflow.train.trainer.train_step``).

Llama-3.1-8B geometry with random bf16 weights, LoRA r64/a128 on q,k,v,o,gate,up,down,
answer-only loss, packed samples (lengths log-uniform in [256, 8192], ~10% prompt), a full
optimizer step per global batch. In one run and on the same batches:

1. numerical check: the fast path against the plain path on one packed batch, on a small
   model and on the 8B geometry (loss, LoRA-gradient cosine);
2. ``plain``: the trainer before the fast path (SDPA with a block-diagonal mask, HF loss on
   full logits, PEFT's fp32 adapter, full activation checkpointing, in-order packing);
3. each lever added one at a time (fewer steps), then ``optimized`` (all levers);
4. a table: real tokens/s (median over steps), MFU, peak memory, ratio; and the recipe's
   estimated wall time for 2000 x 256 samples.

    python bench/train_throughput.py                 # one H100/H200, ~5 min (all levers: ~7 min)
    python bench/train_throughput.py --kernels fa2,fa4   # only `optimized`, once per varlen kernel
    python bench/train_throughput.py --kernels fa4 --lora first,grouped   # ... and per fused-LoRA form
    python bench/train_throughput.py --tiny          # CPU smoke run of the same code

``--kernels`` measures the optimized path side by side with each varlen attention kernel
(``RF_VARLEN_KERNELS``: ``fa2`` = PyTorch's FlashAttention-2 varlen, ``fa4`` = FlashAttention-4 from
``flash-attn-4``), each after its own numerical check against the plain path.

MFU conventions (dense bf16 peak 989 TFLOP/s, H100/H200 SXM): ``mfu_6n`` counts 6 FLOP per
parameter per real token (the usual training convention, as if every weight got a gradient);
``mfu_4n`` counts 4 (forward + input gradient: the work LoRA needs without recompute), both
plus causal attention within each sample. Padding and recompute are not counted as useful.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from reasonflow.train import fast  # noqa: E402
from reasonflow.train.data import IGNORE, Example  # noqa: E402
from reasonflow.train.trainer import (  # noqa: E402
    PLAIN, TrainSettings, configure, lr_lambda, make_optimizer, prepare_model, train_step,
)

PEAK = 989e12
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16384, tie_word_embeddings=False)


def synth_examples(n: int, vocab: int, lo: int, hi: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        ids = [rng.randrange(vocab) for _ in range(length)]
        prompt = max(16, length // 10)
        out.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def random_lora_model(cfg, settings: TrainSettings, dev: torch.device):
    """The benchmarks' model: random bf16 weights of ``cfg`` (seed 0, so every rank of a data-parallel run
    builds the same), the LoRA adapter and levers of ``settings``; returns (model, LoRA params, AdamW,
    schedule)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model = prepare_model(model, settings, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings, dev)
    return model, params, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings))


def flops_per_token(cfg, n_linear: int, mean_ctx: float, mult: int) -> float:
    """mult·N (N = parameters in matmuls) + causal attention (QK and PV, fwd x3 for fwd+bwd)."""
    attn = 2 * 2 * cfg.num_hidden_layers * cfg.hidden_size * (mean_ctx / 2) * 3
    return mult * n_linear + attn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small model, CPU-friendly smoke run")
    ap.add_argument("--global-batch", type=int, default=16, help="samples per optimizer step")
    ap.add_argument("--steps", type=int, default=10, help="measured steps for plain and optimized")
    ap.add_argument("--lever-steps", type=int, default=4, help="measured steps for each intermediate lever")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--checkpoint-layers", default="0,8", help="partial-checkpointing values to try (first fits)")
    ap.add_argument("--skip", default="", help="comma-separated variant names to skip")
    ap.add_argument("--max-mem-gib", type=float, default=75.0)
    ap.add_argument("--budget-s", type=float, default=480, help="skip intermediate levers past 60%% of this")
    ap.add_argument("--lora", default="", help="with --kernels: comma-separated fused-LoRA forms (grouped: q/k/v and "
                    "gate/up as one op each; first: one lora_linear op per layer; addmm: one addmm after the base "
                    "layer), each measured side by side")
    ap.add_argument("--kernels", default="", help="comma-separated varlen kernels (fa2, fa4): measure only the "
                                                  "optimized path, once per kernel, in this order")
    args = ap.parse_args()
    modes = args.lora.split(",") if args.lora else [""]
    if any(m and m not in fast.LORA_FORMS for m in modes):  # before the model is built
        ap.error(f"--lora: unknown form(s) {[m for m in modes if m and m not in fast.LORA_FORMS]}; "
                 f"known: {', '.join(fast.LORA_FORMS)}")
    start = time.time()
    from transformers import LlamaConfig, LlamaForCausalLM

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = LlamaConfig(**(TINY if args.tiny else LLAMA_8B))
    lo, hi, max_len = (32, 1024, 1024) if args.tiny else (256, 8192, 8192)
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}, peft {__import__('peft').__version__}", flush=True)
    base = TrainSettings(precision="bf16", max_length=max_len, global_batch_size=args.global_batch,
                         gradient_checkpointing=True, max_steps=2000, warmup_ratio=0.05)
    plain = dataclasses.replace(base, **PLAIN)
    try:
        import inspect

        from torch.nn.attention.varlen import varlen_attn
        print(f"torch varlen_attn{inspect.signature(varlen_attn)}", flush=True)
    except ImportError as exc:
        print(f"torch.nn.attention.varlen: {exc}", flush=True)
    results = {"device": name, "torch": torch.__version__, "checks": [], "variants": []}

    # -- 1. numerical check on a small model (fresh) and later on the big one ----------------------
    def check(model, label: str) -> None:
        exs = synth_examples(12, cfg.vocab_size if label != "small" else 4096, lo, hi, seed=99)
        num = sum(t != IGNORE for e in exs for t in e.labels)
        lora = [p for p in model.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in lora]
        g = torch.Generator(device="cpu").manual_seed(5)
        for p in lora:  # non-zero B so every adapter weight gets a gradient
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.01)
        from reasonflow.train.trainer import forward_loss, micro_batches

        out = {}
        for tag, s in (("plain", plain), ("fast", dataclasses.replace(base, checkpoint_layers=0))):
            configure(model, s)
            model.zero_grad(set_to_none=True)
            loss = 0.0
            for b in micro_batches(exs, s, 0):
                lval = forward_loss(model, b, num, dev, s)
                lval.backward()
                loss += lval.item()
            out[tag] = (loss, torch.cat([p.grad.flatten().float() for p in lora]))
        cos = torch.nn.functional.cosine_similarity(out["plain"][1], out["fast"][1], dim=0).item()
        rel = abs(out["plain"][0] - out["fast"][0]) / abs(out["plain"][0])
        r = {"model": label, "loss_plain": out["plain"][0], "loss_fast": out["fast"][0], "loss_rel_diff": rel,
             "grad_cosine": cos, "ok": rel < 1e-2 and cos > 0.99}
        print(json.dumps(r), flush=True)
        results["checks"].append(r)
        for p, v in zip(lora, saved):
            p.data.copy_(v)
        model.zero_grad(set_to_none=True)

    if not args.tiny:
        torch.manual_seed(0)
        with torch.device(dev):
            small = LlamaForCausalLM(LlamaConfig(**TINY)).to(dtype)
        check(prepare_model(small, plain, dev), "small")
        del small

    t0 = time.time()
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(dtype)
    model = prepare_model(model, plain, dev)
    n_linear = sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    print(f"model ready in {time.time() - t0:.0f} s: {n_linear / 1e9:.2f} B matmul parameters", flush=True)
    check(model, "tiny" if args.tiny else "llama-3.1-8b")

    lora = [p for p in model.parameters() if p.requires_grad]
    init = [p.detach().clone() for p in lora]
    pool = synth_examples((args.warmup + max(args.steps, args.lever_steps)) * args.global_batch,
                          cfg.vocab_size, lo, hi, seed=1)
    mean_len = statistics.mean(map(len, pool))
    mean_ctx = sum(len(e) ** 2 for e in pool) / sum(map(len, pool))  # token-weighted sample length

    def measure(label: str, s: TrainSettings, steps: int) -> dict | None:
        if label in args.skip.split(","):
            return None
        if label[0] in "+a" and time.time() - start > 0.6 * args.budget_s:
            print(f"skipping {label}: past 60% of the time budget", flush=True)
            return None
        for p, v in zip(lora, init):
            p.data.copy_(v)
        applied = configure(model, s)
        opt = make_optimizer(lora, s, dev)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(s))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rates, losses, rows = [], [], 0
        try:
            for i in range(args.warmup + steps):
                exs = pool[i * s.global_batch_size : (i + 1) * s.global_batch_size]
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = train_step(model, lora, opt, sched, exs, s, 0, dev)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    rates.append(out["tokens"] / (time.perf_counter() - t))
                    losses.append(out["loss"])
                    rows += out["rows"]
        except torch.OutOfMemoryError:
            r = {"variant": label, "error": "OOM", "path": applied}
            print(json.dumps(r), flush=True)
            opt.zero_grad(set_to_none=True)
            del opt
            torch.cuda.empty_cache()
            return r
        tps = statistics.median(rates)
        mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
        r = {"variant": label, "tokens_per_s": round(tps), "steps": steps,
             "spread": [round(min(rates)), round(max(rates))],
             "mfu_6n": round(tps * flops_per_token(cfg, n_linear, mean_ctx, 6) / PEAK, 3),
             "mfu_4n": round(tps * flops_per_token(cfg, n_linear, mean_ctx, 4) / PEAK, 3),
             "peak_mem_gib": round(mem, 1), "rows_per_step": rows / steps, "first_loss": round(losses[0], 4),
             "path": applied}
        print(json.dumps(r), flush=True)
        results["variants"].append(r)
        return r

    if args.kernels:  # only `optimized`, once per varlen kernel, each after its own numerical check
        opt_settings = dataclasses.replace(base, checkpoint_layers=int(args.checkpoint_layers.split(",")[0]),
                                           compile_layers=dev.type == "cuda")
        for name in args.kernels.split(","):
            os.environ[fast.KERNELS_ENV] = name
            for mode in modes:
                fast.LORA_FORM = mode or fast.LORA_FORMS[0]
                label = f"{name}/{mode}" if mode else name
                check(model, f"{'tiny' if args.tiny else 'llama-3.1-8b'}/{label}")
                measure(f"optimized/{label}", opt_settings, args.steps)
        os.environ.pop(fast.KERNELS_ENV)
        fast.LORA_FORM = fast.LORA_FORMS[0]
    else:
        sweep(measure, plain, args)

    # -- 4. summary --------------------------------------------------------------------------------
    ok = [r for r in results["variants"] if "error" not in r]
    p = next((r for r in ok if r["variant"] == "plain" or r["variant"].startswith("optimized/")), None)  # the first
    print(f"\n{'variant':<22}{'tok/s':>9}{'MFU 6N':>8}{'MFU 4N':>8}{'peak GiB':>10}{'x ' + (p or {}).get('variant', 'plain'):>18}")
    for r in results["variants"]:
        if "error" in r:
            print(f"{r['variant']:<22}{r['error']:>9}")
            continue
        ratio = r["tokens_per_s"] / p["tokens_per_s"] if p else float("nan")
        print(f"{r['variant']:<22}{r['tokens_per_s']:>9}{r['mfu_6n']:>8.3f}{r['mfu_4n']:>8.3f}"
              f"{r['peak_mem_gib']:>10.1f}{ratio:>18.2f}")
    samples = 2000 * 256
    print(f"\nsamples: mean length {mean_len:.0f} tokens (token-weighted {mean_ctx:.0f}); "
          f"recipe = 2000 steps x 256 samples = {samples * mean_len / 1e9:.2f} B tokens")
    for r in ok:
        if r["variant"] in ("plain", "optimized", "optimized(kernels)") or r["variant"].startswith("optimized/"):
            hours = samples * mean_len / r["tokens_per_s"] / 3600
            print(f"  {r['variant']:<18} {hours:6.1f} h  (reference NeMo recipe: ~30 h on one H100)")
            results.setdefault("recipe_hours", {})[r["variant"]] = round(hours, 1)
    results["mean_sample_tokens"] = mean_len
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "train_throughput.json"), "w") as fh:
            json.dump(results, fh, indent=1)


def sweep(measure, plain: TrainSettings, args) -> None:
    """Plain, the levers added one by one, then optimized (all levers)."""
    measure("plain", plain, args.steps)
    cur = plain
    for label, change in (("+varlen", {"attention": "varlen"}), ("+fused_loss", {"fused_loss": True}),
                          ("+fused_lora", {"fused_lora": True}), ("+fused_norm_mlp", {"fused_norm_mlp": True}),
                          ("+best_fit", {"pack_strategy": "best_fit"})):
        cur = dataclasses.replace(cur, **change)
        measure(label, cur, args.lever_steps)
    best = None
    candidates = [int(x) for x in args.checkpoint_layers.split(",")]
    for k in candidates:
        r = measure(f"+ckpt_layers={k}", dataclasses.replace(cur, checkpoint_layers=k), args.lever_steps)
        if r is None:  # skipped: take the first candidate (measured earlier)
            best = best if best is not None else candidates[0]
        elif "error" not in r and r["peak_mem_gib"] <= args.max_mem_gib:
            best = k
            break
    if best is not None:
        cur = dataclasses.replace(cur, checkpoint_layers=best)
    measure("+compile_kernels", dataclasses.replace(cur, compile_kernels=True), args.lever_steps)
    final = measure("optimized", dataclasses.replace(cur, compile_layers=True), args.steps)
    if final is None or "error" in final:
        final = measure("optimized(kernels)", dataclasses.replace(cur, compile_kernels=True), args.steps)
    measure("alt:compile_layers,no_fused_norm_mlp",
            dataclasses.replace(cur, compile_layers=True, fused_norm_mlp=False), args.lever_steps)


if __name__ == "__main__":
    main()
