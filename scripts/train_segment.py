"""Snakemake entry point: one segment of the LoRA run (train.segment_steps): resume, train to the
segment's step, leave a checkpoint there; the marker records where the run stands."""

import json
from pathlib import Path

from reasonflow.smk import log_kept_when_stopped, log_to
from reasonflow.train.distributed import run
from reasonflow.train.trainer import STOPPED_EXIT, TrainSettings, checkpoint_root

log_to(snakemake.log[0])
settings = TrainSettings.from_config({**snakemake.params.settings, "stop_at_step": snakemake.params.stop_at_step})
ckpt = checkpoint_root(snakemake.params.checkpoints, snakemake.input.base, snakemake.input.training, settings)
print(f"checkpoints: {ckpt}")
with log_kept_when_stopped(snakemake.log[0], STOPPED_EXIT):  # stopped at a time limit: the retry resumes
    summary = run(snakemake.input.base, snakemake.input.training, settings, None, snakemake.output.metrics,
                  str(ckpt), tensorboard_dir=str(Path(snakemake.params.checkpoints).parent / "tensorboard"),
                  snapshots=snakemake.params.snapshots, threads=snakemake.threads)
Path(snakemake.output.done).write_text(json.dumps(summary, indent=1) + "\n")
