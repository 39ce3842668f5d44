"""Snakemake entry point: LoRA training (resumes from the newest complete checkpoint)."""

from pathlib import Path

from reasonflow.smk import log_kept_when_stopped, log_to
from reasonflow.train.distributed import run
from reasonflow.train.trainer import STOPPED_EXIT, TrainSettings, checkpoint_root, plot_loss

log_to(snakemake.log[0])
settings = TrainSettings.from_config(snakemake.params.settings)
ckpt = checkpoint_root(snakemake.params.checkpoints, snakemake.input.base, snakemake.input.training, settings)
print(f"checkpoints: {ckpt}")
with log_kept_when_stopped(snakemake.log[0], STOPPED_EXIT):  # stopped at a time limit: the retry resumes
    run(  # train.gpus > 1: torchrun on this node (reasonflow.train.distributed)
        snakemake.input.base,
        snakemake.input.training,
        settings,
        snakemake.output.adapter,
        snakemake.output.metrics,
        str(ckpt),
        tensorboard_dir=str(Path(snakemake.output.metrics).parent / "tensorboard"),
        out_merged=snakemake.params.merged_dir if settings.merge_model else None,
        snapshots=snakemake.params.snapshots,
        threads=snakemake.threads,
    )
plot_loss(snakemake.output.metrics, snakemake.output.loss_png)
