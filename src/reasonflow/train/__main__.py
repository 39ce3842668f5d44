"""Command line for the trainer (used by the resume test and for runs outside Snakemake).

    python -m reasonflow.train --base DIR --training training.jsonl --settings '{"max_steps": 10}' \
        --out results/train
"""

import argparse
import json
from pathlib import Path

from reasonflow.train.trainer import TrainSettings, checkpoint_root, plot_loss, train


def main() -> None:
    ap = argparse.ArgumentParser(description="LoRA fine-tuning (transformers + PEFT)")
    ap.add_argument("--base", required=True)
    ap.add_argument("--training", required=True)
    ap.add_argument("--settings", default="{}", help="JSON object of TrainSettings fields")
    ap.add_argument("--out", required=True,
                    help="folder for adapter/, metrics.csv, loss.png, checkpoints/, snapshots/ (adapter_every)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    settings = TrainSettings.from_config(json.loads(args.settings))
    out = Path(args.out)
    train(args.base, args.training, settings, str(out / "adapter"), str(out / "metrics.csv"),
          str(checkpoint_root(out / "checkpoints", args.base, args.training, settings)),
          tensorboard_dir=str(out / "tensorboard"), device=args.device, snapshots=str(out / "snapshots"))
    plot_loss(str(out / "metrics.csv"), str(out / "loss.png"))


if __name__ == "__main__":
    main()
