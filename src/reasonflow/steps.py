"""Names of what is kept per training step; no heavy imports (the rules use it too).

- A checkpoint of step N, and the adapter ``train.adapter_every`` keeps at step N, live in a folder
  ``step-NNNNNNN`` (seven digits, so they sort by step): :func:`step_dir`.
- The evaluation labels the adapter kept at step N ``step-N`` (its model wildcard and the ``model``
  column of the summaries): :func:`step_label`, read back by :func:`step_of`.
"""

from __future__ import annotations

import re
from pathlib import Path

_LABEL = re.compile(r"step-(\d+)")


def step_dir(root: str | Path, step: int) -> Path:
    """``<root>/step-NNNNNNN``."""
    return Path(root) / f"step-{int(step):07d}"


def step_label(step: int) -> str:
    """The evaluation's model label of the adapter kept at ``step``."""
    return f"step-{int(step)}"


def step_of(label: str) -> int | None:
    """The step of a :func:`step_label` label; ``None`` for any other model label."""
    m = _LABEL.fullmatch(str(label))
    return int(m[1]) if m else None
