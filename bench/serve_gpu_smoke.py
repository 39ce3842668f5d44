"""GPU smoke run of the Triton model's generation code (what ``KIND_GPU`` instances execute).

Loads :class:`reasonflow.serve.backend_model.ChatGenerator` on ``cuda:0`` (bf16 by default) with
a base model and a LoRA adapter, then checks on the GPU what the CPU tests check through Triton:
the adapter changes the greedy answer, a mixed base/adapter batch gives each row its solo answer,
and the served greedy answer equals PeftModel's in-process ``generate``. Prints timings.

    python bench/serve_gpu_smoke.py --base resources/demo/model --adapter <dir>/adapter [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from reasonflow.serve.backend_model import ChatGenerator, Row

    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "device": a.device,
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
    t0 = time.perf_counter()
    g = ChatGenerator(a.base, {"lora": a.adapter}, device=a.device, dtype=a.dtype)
    print(f"loaded in {time.perf_counter() - t0:.2f} s; dtype {next(g.model.parameters()).dtype}")

    def rows(models, questions):
        out = [Row(messages=[{"role": "system", "content": "detailed thinking off"},
                             {"role": "user", "content": q}], model=m, max_tokens=a.max_tokens, temperature=0)
               for m, q in zip(models, questions, strict=True)]
        for r in out:
            g.prepare(r)
        return out

    questions = [f"Question {i}?" for i in range(4)]
    solo = {}
    for m in ("base", "lora"):
        for q in questions:
            (r,) = rows([m], [q])
            g.generate([r])
            solo[m, q] = r.text
    assert all(solo["base", q] != solo["lora", q] for q in questions), solo
    mixed_models = [("base", "lora")[i % 2] for i in range(16)]
    mixed_q = [questions[(i // 2) % 4] for i in range(16)]
    batch = rows(mixed_models, mixed_q)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    g.generate(batch)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    same = sum(r.text == solo[m, q] for r, m, q in zip(batch, mixed_models, mixed_q, strict=True))
    print(f"mixed batch of 16 (2 groups) in {dt:.3f} s; {same}/16 equal to their solo answers")

    # in-process PeftModel, same dtype/device, same template and max_tokens
    base = AutoModelForCausalLM.from_pretrained(a.base, dtype=next(g.model.parameters()).dtype).to(a.device)
    ref = PeftModel.from_pretrained(base, a.adapter).eval()
    (r,) = rows(["lora"], [questions[2]])
    ids = torch.tensor([r.prompt_ids], device=a.device)
    with torch.inference_mode():
        out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_tokens,
                           do_sample=False, eos_token_id=g.stop_ids, pad_token_id=g.pad_id)
    new = out[0, ids.shape[1]:].tolist()
    cut = next((k for k, t in enumerate(new) if t in g.stop_ids), len(new))
    expected = g.tokenizer.decode(new[:cut], skip_special_tokens=True)
    g.generate([r])
    print(f"served {r.text!r} ({r.finish_reason}); PeftModel {expected!r}")
    assert r.text == expected
    assert same == 16
    print("OK")


if __name__ == "__main__":
    main()
