"""The GPU benchmark scripts run their CPU smoke mode (they must not rot between GPU sessions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_profile_script_accounts_a_tiny_step():
    out = subprocess.run(
        [sys.executable, "bench/profile_train_step.py", "--tiny", "--global-batch", "6", "--warmup", "1",
         "--steps", "1", "--set", "compile_layers=false", "--set", "compile_kernels=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"profiled 1 steps: (\d+) real tokens in [\d.]+ s = ([\d,]+) tok/s", out.stdout)
    assert m, out.stdout[-2000:]
    assert int(m.group(1)) > 0 and int(m.group(2).replace(",", "")) > 0
    assert "sdpa-per-sample" in out.stdout  # the CPU fallback was taken, and said so


def test_profile_script_rejects_an_unknown_setting():
    out = subprocess.run(
        [sys.executable, "bench/profile_train_step.py", "--tiny", "--set", "no_such_field=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert out.returncode != 0 and "no_such_field" in out.stderr
