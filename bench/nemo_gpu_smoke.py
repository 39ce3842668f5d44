"""GPU smoke run of ``train.backend: nemo`` on a tiny random Llama (no downloads).

The three stages of ``reasonflow.train.nemo_backend`` in order, each timed and reported even
when an earlier one failed: import the HF model into a NeMo checkpoint, ``llm.finetune`` with
LoRA for a few steps (then again with more steps, which must resume), export the adapter to HF
PEFT and load it with ``PeftModel``.

    python bench/nemo_gpu_smoke.py --hf resources/demo/model     # needs NeMo 2.x and a CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True, help="a small HF Llama folder with its tokenizer")
    ap.add_argument("--work", default="/tmp/rf-nemo-smoke")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-distributed-optimizer", action="store_true",
                    help="override the seed's use_distributed_optimizer=True (isolates a checkpoint-save failure)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    report: dict = {"stages": {}}

    def stage(name, fn):
        t0 = time.time()
        try:
            result = fn()
            report["stages"][name] = {"ok": True, "seconds": round(time.time() - t0, 1), "result": str(result)}
        except BaseException as exc:  # report and go on: every stage's outcome is the point
            tb = traceback.format_exc()
            print(tb, flush=True)
            report["stages"][name] = {"ok": False, "seconds": round(time.time() - t0, 1),
                                      "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": tb[-3000:]}
            result = None
        print(f"== {name}: {json.dumps(report['stages'][name])[:600]}", flush=True)
        return result

    from transformers import AutoTokenizer

    from reasonflow.train.nemo_recipe import recipe_values
    from reasonflow.train.trainer import TrainSettings

    tok = AutoTokenizer.from_pretrained(args.hf)
    rows = []
    for i in range(64):
        prompt = tok.apply_chat_template([{"role": "system", "content": "detailed thinking off"},
                                          {"role": "user", "content": f"What is {i} plus {i}?"}],
                                         tokenize=False, add_generation_prompt=True)
        rows.append({"input": prompt, "output": f"The answer is {2 * i}.<|eot_id|>"})
    for name in ("training", "validation", "test"):
        (work / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def values(steps):
        s = TrainSettings(max_steps=steps, global_batch_size=4, micro_batch_size=1, max_length=256, lora_rank=8,
                          lora_alpha=16, checkpoint_every=2, warmup_ratio=0.25, precision="bf16")
        return recipe_values(s, {"model_config": "from_checkpoint", "num_workers": 1, "log_every_n_steps": 1,
                                 "distributed_optimizer": not args.no_distributed_optimizer},
                             base=args.hf, dataset_root=str(work / "data"), restore_path=str(work / "imported"),
                             log_dir=str(work / "log"))

    def env():
        import torch

        from reasonflow.train import nemo_backend as nb

        import nemo
        info = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "nemo": nemo.__version__, "te": nb.have_te(), "workarounds": nb.no_te_workarounds()}
        nb._llm()
        return info

    stage("environment", env)
    from reasonflow.train import nemo_backend as nb

    stage("import_ckpt", lambda: nb.import_base(values(args.steps), args.hf, str(work / "imported")))
    stage("finetune", lambda: nb.finetune(values(args.steps)))
    stage("finetune_resume", lambda: nb.finetune(values(args.steps + 2)))
    ckpt = stage("newest_checkpoint", lambda: nb.newest_checkpoint(str(work / "log")))
    stage("export_hf_peft", lambda: nb.export_adapter(str(ckpt), str(work / "adapter")))

    def reload():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(args.hf)
        model = PeftModel.from_pretrained(base, str(work / "adapter"))
        ids = tok("What is 3 plus 3?", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return {"logits": list(model(ids).logits.shape), "files": sorted(os.listdir(work / "adapter"))}

    stage("peft_reload", reload)
    print(json.dumps(report, indent=1)[:6000])
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "nemo_gpu_smoke.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
