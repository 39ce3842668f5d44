"""Small helpers for the thin Snakemake scripts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path


def log_to(path: str) -> None:
    """Send this process's stdout/stderr (and its children's, e.g. Ray workers) to ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


@contextlib.contextmanager
def log_kept_when_stopped(path: str, status: int):
    """Keep a copy of the job's log ``path`` when the body exits with ``status`` (a training job that
    stopped at its time limit, exit 75): Snakemake deletes a failed job's log before it retries the job,
    and the copy, ``<dir>/<name>.stopped/<time>[-slurm<id>].log``, keeps what the stopped attempt did."""
    try:
        yield
    except SystemExit as e:
        if e.code == status:
            import shutil
            import time

            p = Path(path)
            job = os.environ.get("SLURM_JOB_ID")
            name = time.strftime("%Y%m%d-%H%M%S") + (f"-slurm{job}" if job else "") + ".log"
            dest = p.parent / f"{p.stem}.stopped" / name
            print(f"stopped: this log is kept as {dest} (Snakemake deletes it before the retry)", flush=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            sys.stdout.flush()
            sys.stderr.flush()
            shutil.copyfile(p, dest)
        raise
