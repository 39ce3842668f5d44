"""Shared fixtures: the demo fixture tree (built by `make fixtures`) and helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    if not (DEMO / "MANIFEST.json").is_file():
        pytest.fail("demo fixtures missing: run `make fixtures` (make test does it)")
    return DEMO


@pytest.fixture(scope="session")
def expected_fates(demo_dir) -> dict[str, dict]:
    """``"<file>@<offset>" -> {"fate", "case", ...}`` for every line of every raw file."""
    fates = {}
    with open(demo_dir / "expected_fates.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            fates[f"{rec['file']}@{rec['offset']}"] = rec
    return fates


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]
