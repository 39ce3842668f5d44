"""Evaluation throughput on one GPU: the whole serving stack vs the same engine offline vs the hf engine.

One command, three measurements side by side on a random-weight Llama-3.1-8B geometry (bf16) with an
unmerged r64 LoRA adapter on all seven projections, the evaluation's request shape (the reference
prompt, "detailed thinking on"), sampled at T=0.6 with a per-request seed, every answer exactly
``--max-tokens`` long (``ignore_eos``):

1. ``stack``: ``tritonserver`` + the vLLM Python-backend model (``serve.engine: vllm``) + the OpenAI
   front end + the project's concurrent evaluation client (``reasonflow.evaluate.client``): ``--n``
   requests (default 1024), ``--concurrency`` of them in flight (default 256, config/config.yaml's),
   so the engine runs full as in a real evaluate job, where one job asks thousands of questions;
2. ``offline``: vLLM's offline ``LLM.generate`` of the same ``--n`` requests on the same engine
   arguments (a subprocess, so the GPU is free again for the next step);
3. ``hf``: the stack with ``serve.engine: hf`` (HF ``generate`` behind Triton's dynamic batcher),
   ``--hf-n`` requests.

It prints output tokens/s of each, the ratios, and the projected GPU time of config/config.yaml's
full evaluation. With ``--skip hf`` the base is never written to disk (vLLM's ``load_format:
dummy`` makes its random weights on the GPU). Needs a CUDA build of vLLM and the serving venv's
tritonserver (bench/device/ has the recipe for the lent H200). Nothing is downloaded: the model is random, the tokenizer the demo's.

    PYTHONPATH=src python3 bench/serve_throughput.py --tokenizer resources/demo/tokenizer --serve-venv /tmp/sv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ITEM = {"question": "Which of the following best explains why the sky appears blue during the day? " * 3,
        "choices": ["Rayleigh scattering", "Mie scattering", "Refraction", "Absorption by ozone"]}
# config/config.yaml's evaluation: MMLU's 26 STEM subjects (test split), GPQA main and diamond
QUESTIONS = {"mmlu (stem)": 4958, "gpqa_main": 448, "gpqa_diamond": 198}


def make_model(tokenizer: str, out: Path, weights: bool = True) -> tuple[Path, Path]:
    """Random Llama-3.1-8B geometry in bf16 + a random r64 adapter (all seven projections).

    ``weights=False`` writes only the base's ``config.json`` (and tokenizer): vLLM then makes random
    weights on the GPU itself (``load_format: dummy``), and the 16 GB checkpoint is never written.
    The ``hf`` engine needs the weights on disk."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base, lora = out / ("m8b" if weights else "m8b-config"), out / "m8b-lora"
    if (base / "config.json").is_file() and (lora / "adapter_config.json").is_file():
        return base, lora
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if weights:
        model.save_pretrained(base)
    else:
        model.config.save_pretrained(base)
    for f in Path(tokenizer).iterdir():
        shutil.copy(f, base / f.name)
    peft = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, task_type="CAUSAL_LM", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)  # a non-zero adapter (its cost does not depend on the values)
    peft.save_pretrained(lora)
    del model, peft
    torch.cuda.empty_cache()
    return base, lora


def engine_args(a, dummy: bool = False) -> dict:
    extra = {"load_format": "dummy"} if dummy else {}
    return {"dtype": a.dtype, "max_model_len": a.max_model_len, "gpu_memory_utilization": a.gpu_memory,
            "engine_args": {"max_num_seqs": a.max_num_seqs, "seed": 0, **extra}}


def dummy_base(base: Path) -> bool:
    """A base folder with a config but no weights (``make_model(weights=False)``)."""
    return not any(base.glob("*.safetensors")) and not any(base.glob("*.bin"))


def offline(a, base: Path, lora: Path) -> dict:
    """vLLM's offline engine on the stack's engine arguments and the same prompts/seeds."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from reasonflow.evaluate.prompts import messages
    from reasonflow.serve.repository import vllm_engine_args

    args = vllm_engine_args(str(base), {"lora": str(lora)}, **engine_args(a, dummy_base(base)))
    tok = AutoTokenizer.from_pretrained(base)
    text = tok.apply_chat_template(messages(ITEM, "on"), tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    llm = LLM(**args)
    req = LoRARequest("lora", 1, str(lora))
    out = {}
    for name, n in (("warmup", 16), ("offline", a.n)):
        sps = [SamplingParams(temperature=0.6, top_p=1.0, max_tokens=a.max_tokens, seed=1000 + i, ignore_eos=True)
               for i in range(n)]
        t = time.perf_counter()
        res = llm.generate([{"prompt_token_ids": ids} for _ in range(n)], sps, lora_request=req, use_tqdm=False)
        dt = time.perf_counter() - t
        toks = sum(len(r.outputs[0].token_ids) for r in res)
        out = {"requests": n, "tokens": toks, "seconds": round(dt, 2), "tokens_per_s": round(toks / dt, 1)}
    return out


def stack(a, base: Path, lora: Path, engine: str, n: int, work: Path) -> dict:
    """Triton + the OpenAI front end + the evaluation client, ``n`` requests in flight."""
    from reasonflow.evaluate.client import ChatClient, Sampling, run_items
    from reasonflow.serve import serving
    from reasonflow.serve.repository import write_triton_repo

    repo = work / f"repo_{engine}"
    if engine == "vllm":
        write_triton_repo(base, lora, repo, engine="vllm", max_model_len=a.max_model_len,
                          vllm=engine_args(a, dummy_base(base)))
    else:
        write_triton_repo(base, lora, repo, engine="hf", instance_kind="KIND_GPU" if a.dtype == "bfloat16" else
                          "KIND_CPU", dtype=a.dtype,
                          max_batch_size=n, preferred_batch_sizes=[n], max_queue_delay_us=200_000,
                          max_model_len=a.max_model_len)
    t0 = time.perf_counter()
    with serving(repo, work / f"logs_{engine}", serve_venv=a.serve_venv, ready_timeout=1200) as url:
        ready = time.perf_counter() - t0
        conc = min(n, a.concurrency if engine == "vllm" else n)
        client = ChatClient(url, timeout=3600, retries=0, pool_size=conc)
        # ignore_eos only where the engine has it; random weights almost never sample the end-of-turn token
        sampling = Sampling(temperature=0.6, top_p=1.0, max_tokens=a.max_tokens, seed=0,
                            ignore_eos=engine == "vllm")
        out = {}
        for name, count in (("warmup", min(16, n)), (engine, n)):
            items = [{**ITEM, "id": f"{name}/{i:05d}"} for i in range(count)]
            t = time.perf_counter()
            records, _ = run_items(items, client, model="lora", mode="on", sampling=sampling,
                                   concurrency=min(count, conc), progress=False)
            dt = time.perf_counter() - t
            toks = sum(int(r["completion_tokens"] or 0) for r in records)
            out = {"requests": count, "concurrency": min(count, conc), "tokens": toks, "seconds": round(dt, 2),
                   "tokens_per_s": round(toks / dt, 1), "server_ready_s": round(ready, 1)}
    return out


def projection(rate: float, mean_tokens: float) -> dict:
    try:
        import yaml

        ev = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["evaluate"]
    except ImportError:  # config/config.yaml's values as of this writing
        ev = {"settings": {"repeats": 3, "max_tokens": 2048}, "models": [0, 1], "modes": [0, 1]}
    gens = sum(QUESTIONS.values()) * ev["settings"]["repeats"] * len(ev["models"]) * len(ev["modes"])
    hours = lambda toks: round(gens * toks / rate / 3600, 2)  # noqa: E731
    return {"generations": gens, "max_tokens": ev["settings"]["max_tokens"],
            f"hours_at_mean_{int(mean_tokens)}_tokens": hours(mean_tokens),
            "hours_if_every_answer_is_max_tokens": hours(ev["settings"]["max_tokens"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=str(REPO / "resources" / "demo" / "tokenizer"))
    ap.add_argument("--work", default="/tmp/serve_bench")
    ap.add_argument("--serve-venv", default=os.environ.get("REASONFLOW_SERVE_VENV"))
    ap.add_argument("--n", type=int, default=1024,
                    help="requests (offline and stack); more than --concurrency, as in a real evaluate job")
    ap.add_argument("--concurrency", type=int, default=256,
                    help="requests in flight through the stack (config/config.yaml's evaluate concurrency)")
    ap.add_argument("--hf-n", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--gpu-memory", type=float, default=0.85)
    ap.add_argument("--mean-tokens", type=float, default=1000.0, help="mean answer length for the projection")
    ap.add_argument("--model", help="use this model dir instead of the random 8B one (with --adapter)")
    ap.add_argument("--adapter")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--only", choices=("offline", "stack", "hf"), help="one measurement (internal)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("offline", "stack", "hf"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.model:  # an existing model + adapter (e.g. the demo's on the CPU: a smoke test of this script)
        base, lora = Path(a.model).absolute(), Path(a.adapter).absolute()
    else:
        base, lora = make_model(a.tokenizer, work, weights="hf" not in a.skip)
    if a.only:
        fn = {"offline": lambda: offline(a, base, lora), "stack": lambda: stack(a, base, lora, "vllm", a.n, work),
              "hf": lambda: stack(a, base, lora, "hf", a.hf_n, work)}[a.only]
        print("RESULT " + json.dumps(fn()), flush=True)
        return 0
    saved = work / "results.json"  # measurements of earlier calls (--skip) count in the summary
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    for name in ("offline", "stack", "hf"):  # each in its own process: the GPU is free for the next
        if name in a.skip:
            continue
        cmd = [sys.executable, __file__, *sys.argv[1:], "--only", name]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}", flush=True)
            continue
        results[name] = json.loads(line[7:])
        saved.write_text(json.dumps(results, indent=1))
        print(json.dumps({name: results[name], "wall_s": round(time.perf_counter() - t, 1)}), flush=True)
    rate = {k: v["tokens_per_s"] for k, v in results.items()}
    summary = {"output_tokens_per_s": rate}
    if "stack" in rate and "offline" in rate:
        summary["stack_over_offline"] = round(rate["stack"] / rate["offline"], 3)
    if "stack" in rate and "hf" in rate:
        summary["stack_over_hf"] = round(rate["stack"] / rate["hf"], 1)
    for k in ("stack", "hf"):
        if k in rate:
            summary[f"projection_{k}"] = projection(rate[k], a.mean_tokens)
    print(json.dumps(summary, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
