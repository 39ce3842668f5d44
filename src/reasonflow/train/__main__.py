"""Command line for the trainer (the tests, runs outside Snakemake, and each torchrun worker).

    python -m reasonflow.train --base DIR --training training.jsonl --settings '{"max_steps": 10}' \
        --out results/train

``--out`` names one folder for everything (adapter/, metrics.csv, loss.png, checkpoints/<run>/,
snapshots/, tensorboard/); the explicit flags (``--adapter``, ``--metrics``, ``--checkpoints`` (the
run's own folder), ...) override its parts: :func:`reasonflow.train.distributed.run` starts its
torchrun workers with them. With ``"gpus": N`` in the settings the command starts torchrun itself.
A stopped run exits with status 75 (resume by running it again).
"""

import argparse
import json
from pathlib import Path

from reasonflow.train.distributed import run
from reasonflow.train.trainer import TrainSettings, checkpoint_root, plot_loss


def main() -> None:
    ap = argparse.ArgumentParser(description="LoRA fine-tuning (transformers + PEFT)")
    ap.add_argument("--base", required=True)
    ap.add_argument("--training", required=True)
    ap.add_argument("--settings", default="{}", help="JSON object of TrainSettings fields")
    ap.add_argument("--out", help="folder for adapter/, metrics.csv, loss.png, checkpoints/, snapshots/, tensorboard/")
    ap.add_argument("--adapter", help="adapter folder (default OUT/adapter)")
    ap.add_argument("--metrics", help="metrics.csv (default OUT/metrics.csv)")
    ap.add_argument("--checkpoints", help="this run's checkpoint folder (default OUT/checkpoints/<run fingerprint>)")
    ap.add_argument("--tensorboard", help="TensorBoard folder (default OUT/tensorboard)")
    ap.add_argument("--snapshots", help="adapters kept every train.adapter_every steps (default OUT/snapshots)")
    ap.add_argument("--merged", help="also write the merged model here")
    ap.add_argument("--summary", help="write the run's summary (JSON) here")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    if not args.out and not (args.metrics and args.checkpoints):
        ap.error("give --out, or --metrics and --checkpoints")
    settings = TrainSettings.from_config(json.loads(args.settings))
    out = Path(args.out) if args.out else None

    def path(given, default):
        return given or (str(out / default) if out else None)

    ckpt = args.checkpoints or str(checkpoint_root(out / "checkpoints", args.base, args.training, settings))
    metrics = path(args.metrics, "metrics.csv")
    summary = run(args.base, args.training, settings, path(args.adapter, "adapter"), metrics, ckpt,
                  tensorboard_dir=path(args.tensorboard, "tensorboard"), out_merged=args.merged, device=args.device,
                  snapshots=path(args.snapshots, "snapshots"))
    if "rank" in summary:  # a torchrun worker other than rank 0: rank 0 reports
        return
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary) + "\n")
    if out and "steps" in summary:
        plot_loss(metrics, str(out / "loss.png"))


if __name__ == "__main__":
    main()
