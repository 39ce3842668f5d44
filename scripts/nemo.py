"""Snakemake entry point of train.backend nemo: runs ``reasonflow.train.nemo_cli`` with train.nemo.python.

The interpreter that has NeMo is the NeMo container's ``python`` (``--sdm apptainer``) or a
local ``.venv-nemo/bin/python``; this script itself needs only the standard library, so it runs
in either.

params: step ("import" | "train"), python, values (JSON of reasonflow.train.nemo_recipe.recipe_values)
"""

import os
import subprocess
import sys

SRC = os.path.abspath(os.path.join(snakemake.scriptdir, "..", "src"))
sys.path.insert(0, SRC)

from reasonflow.smk import log_to  # noqa: E402

log_to(snakemake.log[0])
step = snakemake.params.step
cmd = [snakemake.params.python, "-m", "reasonflow.train.nemo_cli", step, "--values", snakemake.params.values]
if step == "import":
    cmd += ["--base", snakemake.input.base, "--out", snakemake.output.ckpt]
else:
    cmd += ["--training", snakemake.input.training, "--adapter", snakemake.output.adapter,
            "--metrics", snakemake.output.metrics, "--loss-png", snakemake.output.loss_png]
env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)}
print(f"running: {' '.join(cmd[:4])} ...", flush=True)
subprocess.run(cmd, check=True, env=env)
