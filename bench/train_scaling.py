"""Data-parallel scaling of the training step (``train.gpus``): tokens/s per GPU for N processes.

For each N of ``--gpus`` this starts ``torchrun --standalone --nproc-per-node N`` on this script;
every rank builds the same random-weight model (Llama-3.1-8B geometry, or ``--tiny``), wraps it in
the trainer's own data-parallel step (``reasonflow.train.distributed.DataParallel`` through
``trainer.train_step``: each rank takes its share of every global batch, DDP sums the LoRA
gradients) and runs the same global batches (packed samples, lengths log-uniform in [256, 8192]).
It prints, per N: real tokens/s of the whole job and per GPU (median over the measured steps),
the scaling efficiency ``tokens/s(N) / (N x tokens/s(1))``, peak memory per GPU (the largest rank),
and the largest relative difference of the step losses from the N=1 losses on the same batches.

    python bench/train_scaling.py --gpus 1,2,4,8            # one node with 8 GPUs (the recipe's batch)
    python bench/train_scaling.py --tiny --gpus 1,2          # CPU smoke run (gloo), same code

On GPUs keep NCCL's NVLink multicast off where the platform asks for it
(``NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1``; the script sets
these defaults for its workers unless they are set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def worker(args) -> None:
    import torch

    from reasonflow.train import distributed
    from reasonflow.train.trainer import TrainSettings, train_step
    from train_throughput import LLAMA_8B, TINY, random_lora_model, synth_examples
    from transformers import LlamaConfig

    dev, parallel = distributed.init("cpu" if args.tiny else None)
    cfg = LlamaConfig(**(TINY if args.tiny else LLAMA_8B))
    lo, hi, max_len = (32, 1024, 1024) if args.tiny else (256, 8192, 8192)
    settings = TrainSettings(precision="bf16", max_length=max_len, global_batch_size=args.global_batch,
                             max_steps=2000, compile_layers=dev.type == "cuda" and not args.no_compile)
    model, lora, opt, sched = random_lora_model(cfg, settings, dev)  # the same on every rank
    dp = distributed.DataParallel(model, dev, settings) if parallel else None
    rank = dp.rank if dp else 0
    pool = synth_examples((args.warmup + args.steps) * args.global_batch, cfg.vocab_size, lo, hi, seed=1)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates, losses = [], []
    for i in range(args.warmup + args.steps):
        exs = pool[i * args.global_batch:(i + 1) * args.global_batch]
        if dp:
            dp.barrier()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = train_step(model, lora, opt, sched, exs, settings, 0, dev, dp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        losses.append(out["loss"])
        if i >= args.warmup:
            rates.append(out["tokens"] / seconds)
        if rank == 0:
            print(f"  step {i + 1}: loss {out['loss']:.6f}, {out['tokens'] / seconds:,.0f} tokens/s, {seconds:.2f} s",
                  flush=True)
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    if dp:
        mem = dp.agree(round(mem * 1000)) / 1000  # the largest rank's
    if rank == 0:
        with open(args.result, "w") as fh:
            json.dump({"tokens_per_s": statistics.median(rates), "losses": losses, "peak_mem_gib": mem,
                       "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}, fh)
    if dp:
        dp.barrier()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="1,2,4,8", help="process counts to measure, comma-separated (1 first)")
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU (gloo): a smoke run of the same code")
    ap.add_argument("--global-batch", type=int, default=0, help="samples per optimizer step (default: 256, tiny 16)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per N")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="eager layers (faster start, slower steps)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.global_batch = args.global_batch or (16 if args.tiny else 256)
    if args.worker:
        return worker(args)
    import torch

    from reasonflow.train import distributed

    counts = [int(x) for x in args.gpus.split(",")]
    if not args.tiny:
        have = torch.cuda.device_count()
        skipped = [n for n in counts if n > have]
        counts = [n for n in counts if n <= have]
        if skipped:
            print(f"this node has {have} GPU(s): not measured N = {skipped}", flush=True)
    results = {}
    for n in counts:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            result = fh.name
        cmd = [*distributed.torchrun(n), os.path.abspath(__file__), "--worker", "--result", result,
               "--global-batch", str(args.global_batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--tiny"] * args.tiny + ["--no-compile"] * args.no_compile
        env = {**NVLS_OFF, **os.environ}
        if args.tiny:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        print(f"N = {n}: {' '.join(cmd[:6])} ...", flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            print(f"N = {n}: torchrun failed (exit status {rc})", flush=True)
            continue
        with open(result) as fh:
            results[n] = json.load(fh)
        os.unlink(result)
        print(f"N = {n}: done in {time.time() - t0:.0f} s", flush=True)
    if not results:
        raise SystemExit("nothing measured")
    base = results.get(1)
    print(f"\n{'N':>3}{'tokens/s':>12}{'per GPU':>11}{'efficiency':>12}{'peak GiB/GPU':>14}{'max loss rel diff':>19}")
    for n, r in results.items():
        per = r["tokens_per_s"] / n
        eff = r["tokens_per_s"] / (n * base["tokens_per_s"]) if base else float("nan")
        diff = (max(abs(a - b) / abs(b) for a, b in zip(r["losses"], base["losses"])) if base else float("nan"))
        r.update(per_gpu=per, efficiency=eff, loss_rel_diff=diff)
        print(f"{n:>3}{r['tokens_per_s']:>12,.0f}{per:>11,.0f}{eff:>12.3f}{r['peak_mem_gib']:>14.1f}{diff:>19.2e}")
    print(f"\nglobal batch {args.global_batch} samples, {args.steps} measured steps after {args.warmup} warm-up; "
          f"device {next(iter(results.values()))['device']}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "train_scaling.json"), "w") as fh:
            json.dump({str(n): r for n, r in results.items()}, fh, indent=1)


if __name__ == "__main__":
    main()
