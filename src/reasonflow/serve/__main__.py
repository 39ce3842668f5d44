"""``python -m reasonflow.serve REPO [--log-dir DIR] [--port N]``: serve until Ctrl-C.

``python -m reasonflow.serve --write BASE ADAPTER OUT``: write the Triton (OUT/triton) and
vLLM (OUT/vllm) repositories first, then serve OUT/triton.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from reasonflow.serve import serving, write_triton_repo, write_vllm_repo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reasonflow.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", nargs="?", help="Triton repository written by write_triton_repo")
    ap.add_argument("--write", nargs=3, metavar=("BASE", "ADAPTER", "OUT"))
    ap.add_argument("--log-dir", default="logs/serve")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--launcher", choices=("local", "apptainer"), default="local")
    ap.add_argument("--image")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    repo = a.repo
    if a.write:
        base, adapter, out = a.write
        write_triton_repo(base, adapter, Path(out) / "triton")
        write_vllm_repo(base, adapter, Path(out) / "vllm")
        repo = repo or str(Path(out) / "triton")
    if not repo:
        ap.error("give REPO or --write")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with serving(repo, a.log_dir, host=a.host, port=a.port, launcher=a.launcher, image=a.image) as url:
        print(f"OpenAI API at {url} (logs in {a.log_dir}); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
