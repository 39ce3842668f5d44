"""GPU smoke run of the training stage's own code path (not a toy).

Random-weight Llama-3.1-8B geometry in bf16, LoRA r64/a128 on all linear layers,
packed rows of 8192 tokens, sample lengths log-uniform in [256, 8192], a few steps
through :func:`reasonflow.train.trainer.train`. Prints the metrics CSV.

    python bench/gpu_train_smoke.py --tokenizer resources/demo/tokenizer [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="any tokenizer whose ids fit the 128k vocab")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--work", default="/tmp/rf-gpu-smoke")
    args = ap.parse_args()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from reasonflow.train.trainer import TrainSettings, train

    work = Path(args.work)
    model_dir = work / "llama-8b-random"
    t0 = time.time()
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    print(f"random 8B model written in {time.time() - t0:.0f} s", flush=True)

    rng = random.Random(0)
    vocab_words = ["alpha", "beta", "gamma", "delta", "proof", "energy", "number", "answer", "think", "step"]
    prompt_head = tok.apply_chat_template([{"role": "system", "content": "detailed thinking on"},
                                           {"role": "user", "content": "Q"}], tokenize=False,
                                          add_generation_prompt=True)
    rows = []
    for _ in range(args.steps * args.global_batch + 8):
        n = int(math.exp(rng.uniform(math.log(256), math.log(8192))))  # target sample length in tokens
        words = " ".join(rng.choice(vocab_words) for _ in range(n))
        ids = tok(words, add_special_tokens=False)["input_ids"][: max(8, n - 64)]
        answer = tok.decode(ids)
        rows.append({"input": prompt_head, "output": answer + "<|eot_id|>"})
    training = work / "training.jsonl"
    training.write_text("".join(json.dumps(r) + "\n" for r in rows))

    settings = TrainSettings(global_batch_size=args.global_batch, max_steps=args.steps, max_length=8192,
                             packing=True, precision="bf16", gradient_checkpointing=True,
                             checkpoint_every=args.steps, keep_last=1, warmup_ratio=0.0)
    summary = train(str(model_dir), str(training), settings, str(work / "adapter"), str(work / "metrics.csv"),
                    str(work / "ckpt"))
    print(json.dumps(summary))
    print((work / "metrics.csv").read_text())
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
