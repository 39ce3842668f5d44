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


def test_scaling_script_measures_one_and_two_processes_with_the_same_losses():
    """bench/train_scaling.py's CPU mode: torchrun with 1 and 2 gloo processes through the trainer's own
    data-parallel step; the table has both rows and the 2-process losses equal the 1-process ones."""
    out = subprocess.run(
        [sys.executable, "bench/train_scaling.py", "--tiny", "--gpus", "1,2", "--steps", "1", "--warmup", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {int(m[1]): m for m in re.finditer(r"^\s+(\d)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+[\d.]+\s+([\d.e+-]+)$",
                                              out.stdout, re.M)}
    assert sorted(rows) == [1, 2], out.stdout[-2000:]
    assert float(rows[1][4]) == 1.0 and float(rows[2][5]) < 1e-4
