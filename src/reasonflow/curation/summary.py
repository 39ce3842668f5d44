"""Sum per-shard curation stats into one funnel (and check conservation overall)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from reasonflow.curation.filters import FILTER_ORDER


def _empty_bucket() -> dict:
    return {"shards": 0, "rows_in": 0, "kept": 0, "rejected": 0, "dropped": dict.fromkeys(FILTER_ORDER, 0)}


def _add(bucket: dict, stats: dict) -> None:
    bucket["shards"] += 1
    for key in ("rows_in", "kept", "rejected"):
        bucket[key] += stats[key]
    for name in FILTER_ORDER:
        bucket["dropped"][name] += stats["dropped"][name]


def summarize_stats(stats_paths: list[str]) -> dict:
    total, per_source = _empty_bucket(), {}
    for path in stats_paths:
        s = json.loads(Path(path).read_text(encoding="utf-8"))
        if not s["conservation"]["ok"]:
            raise AssertionError(f"{path}: shard failed its conservation check")
        _add(total, s)
        _add(per_source.setdefault(s["source"], _empty_bucket()), s)
    balance = total["kept"] + total["rejected"] + sum(total["dropped"].values())
    if balance != total["rows_in"]:
        raise AssertionError(f"funnel does not add up: rows_in={total['rows_in']} but accounted {balance}")
    return {"total": total, "per_source": dict(sorted(per_source.items()))}


def funnel_rows(summary: dict) -> list[dict]:
    """One row per step: rows entering, leaving and remaining (the report's funnel)."""
    t = summary["total"]
    rows, remaining = [], t["rows_in"]
    for step, removed in [("rejected (malformed)", t["rejected"]), *t["dropped"].items()]:
        rows.append({"step": step, "rows_before": remaining, "removed": removed, "rows_after": remaining - removed})
        remaining -= removed
    assert remaining == t["kept"]
    return rows


def write_summary(stats_paths: list[str], json_out: str, csv_out: str) -> dict:
    summary = summarize_stats(stats_paths)
    Path(json_out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(csv_out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "rows_before", "removed", "rows_after"])
        writer.writeheader()
        writer.writerows(funnel_rows(summary))
    return summary
