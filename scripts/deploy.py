"""Snakemake entry point: the trained adapter + base model -> Triton model repositories.

input:  base (HF model dir), adapter (PEFT adapter dir; or params.adapter, a folder the input job wrote)
output: triton (repository root: <name>/config.pbtxt, <name>/1/model.py, <name>/serving.json),
        vllm (optional; repository root of the vLLM-backend variant)
params: settings (dict; keys of reasonflow.serve.repository.TRITON_KEYS, plus "vllm": {...}),
        and/or the same keys as separate params (name=..., max_batch_size=..., ...); optional adapter
"""

import json
from pathlib import Path

from reasonflow.serve.repository import deploy
from reasonflow.smk import log_to

log_to(snakemake.log[0])
settings = dict(snakemake.params.get("settings", None) or {})
settings.update({k: v for k, v in snakemake.params.items() if k not in ("settings", "adapter")})
step_adapter = snakemake.params.get("adapter", None)
adapter = step_adapter or snakemake.input.adapter
if not Path(adapter, "adapter_config.json").is_file():
    why = ("the training run that wrote it kept no adapter at this step (train.adapter_every changed after "
           "it ran?); retrain, or drop the step from evaluate.steps") if step_adapter else (
           "the train job's output is incomplete; rerun it (snakemake --forcerun train)")
    raise SystemExit(f"no adapter_config.json in {adapter}: {why}")
out = deploy(
    snakemake.input.base,
    adapter,
    snakemake.output.triton,
    snakemake.output.get("vllm", None),
    settings,
)
print(json.dumps({k: str(v) for k, v in out.items()}, indent=2))
for model_dir in out.values():
    for f in sorted(model_dir.rglob("*")):
        if f.is_file():
            print(f"wrote {f} ({f.stat().st_size} bytes)")
