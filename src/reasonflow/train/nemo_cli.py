"""Command line of the NeMo backend (the Snakemake rules call it inside the NeMo container).

    python -m reasonflow.train.nemo_cli import --values JSON --base HF_DIR --out NEMO_DIR
    python -m reasonflow.train.nemo_cli train  --values JSON --training training.jsonl \\
        --adapter DIR --metrics metrics.csv --loss-png loss.png

``--values`` is :func:`reasonflow.train.nemo_recipe.recipe_values` as JSON (the rule's params).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def prepare_dataset_root(root: str, training: str) -> None:
    """``FineTuningDataModule`` reads ``<root>/training.jsonl``: link the merge's file there.

    Validation is off in the seed (``limit_val_batches=0``); a one-row ``validation.jsonl`` keeps
    NeMo from failing should it look for the file.
    """
    root_p = Path(root)
    root_p.mkdir(parents=True, exist_ok=True)
    link = root_p / "training.jsonl"
    target = os.path.abspath(training)
    if link.is_symlink() or link.exists():
        if os.path.realpath(link) != os.path.realpath(target):
            link.unlink()
            for stale in root_p.glob("training.jsonl*"):  # NeMo's index files of an older training.jsonl
                stale.unlink()
    if not link.exists():
        link.symlink_to(target)
    with open(target, encoding="utf-8") as fh:
        first = fh.readline()
    (root_p / "validation.jsonl").write_text(first)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="NeMo 2 backend: import / train (+ export to HF PEFT)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import")
    imp.add_argument("--values", required=True)
    imp.add_argument("--base", required=True)
    imp.add_argument("--out", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--values", required=True)
    tr.add_argument("--training", required=True)
    tr.add_argument("--adapter", required=True)
    tr.add_argument("--metrics", required=True)
    tr.add_argument("--loss-png", required=True)
    args = ap.parse_args(argv)
    values = json.loads(args.values)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the base model is local (download_model fetched it)

    from reasonflow.train import nemo_backend as nb

    print(f"nemo backend, workarounds: {nb.no_te_workarounds()}", flush=True)
    if args.cmd == "import":
        shutil.rmtree(args.out, ignore_errors=True)
        print(nb.import_base(values, args.base, args.out), flush=True)
        return
    prepare_dataset_root(values["data.dataset_root"], args.training)
    nb.finetune(values, metrics_csv=args.metrics)
    ckpt = nb.newest_checkpoint(values["log.log_dir"])
    print(f"exporting {ckpt}", flush=True)
    nb.export_adapter(str(ckpt), args.adapter)
    from reasonflow.train.trainer import plot_loss

    plot_loss(args.metrics, args.loss_png)


if __name__ == "__main__":
    main(sys.argv[1:])
