"""Dataset statistics with dask: the funnel, category x reasoning counts, token histograms, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from reasonflow.curation.filters import FILTER_ORDER

N_BINS = 32


def funnel(stats_files: list[str], merge_stats: dict) -> list[dict]:
    """Rows through every step, curation filters summed over shards (dask.bag) then the merge."""
    import dask.bag as db

    def pick(s: dict) -> dict:
        return {"rows_in": s["rows_in"], "rejected": s["rejected"], **{f: s["dropped"][f] for f in FILTER_ORDER}}

    def add(a: dict, b: dict) -> dict:
        return {k: a[k] + b[k] for k in a}

    zero = dict.fromkeys(["rows_in", "rejected", *FILTER_ORDER], 0)
    bag = db.from_sequence(sorted(stats_files), npartitions=max(1, min(len(stats_files), 64)))
    total = bag.map(lambda p: pick(json.loads(Path(p).read_text(encoding="utf-8")))).fold(add, add, initial=zero)
    total = total.compute()
    m = merge_stats["counts"]
    steps = [("rejected (malformed)", total["rejected"]), *((f, total[f]) for f in FILTER_ORDER)]
    steps += [("duplicates", m["duplicates_dropped"]), ("contaminated", m["contaminated_dropped"]),
              ("max_samples cap", m["capped_dropped"])]
    rows, remaining = [], total["rows_in"]
    for step, removed in steps:
        rows.append({"step": step, "rows_before": remaining, "removed": removed, "rows_after": remaining - removed})
        remaining -= removed
    if remaining != m["training_rows"]["total"]:
        raise AssertionError(f"funnel ends at {remaining} rows but training.jsonl has {m['training_rows']['total']}")
    return rows


def _hist(part: pd.DataFrame, column: str, edges: np.ndarray) -> pd.DataFrame:
    out = {}
    for bucket in ("on", "off"):
        out[bucket] = np.histogram(part.loc[part["reasoning"] == bucket, column].to_numpy(), bins=edges)[0]
    return pd.DataFrame(out)


def training_stats(training: str, max_tokens: int, max_completion: int) -> dict:
    import dask.dataframe as dd

    ddf = dd.read_json(training, lines=True, blocksize=64 * 2**20, dtype={"token_count": "int64"})
    ddf = ddf[["category", "reasoning", "token_count", "completion_token_count"]]
    by_cat = ddf.groupby(["category", "reasoning"]).size().compute().sort_index()
    hists = {}
    for column, top in (("token_count", max_tokens), ("completion_token_count", max_completion)):
        edges = np.linspace(0, top, N_BINS + 1)
        parts = ddf.map_partitions(_hist, column, edges, meta={"on": "int64", "off": "int64"}).to_delayed()
        counts = sum(p.compute().to_numpy() for p in parts) if parts else np.zeros((N_BINS, 2), dtype=int)
        hists[column] = {"edges": edges.tolist(), "on": counts[:, 0].tolist(), "off": counts[:, 1].tolist()}
    return {
        "category_reasoning": [{"category": c, "reasoning": r, "rows": int(n)} for (c, r), n in by_cat.items()],
        "histograms": hists,
    }


def write_all(stats_files, merge_stats_path, training, max_tokens, max_completion, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merge_stats = json.loads(Path(merge_stats_path).read_text(encoding="utf-8"))
    summary = {"funnel": funnel(stats_files, merge_stats), **training_stats(training, max_tokens, max_completion)}
    summary["merge"] = merge_stats["counts"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _csv(out / "funnel.csv", summary["funnel"])
    _csv(out / "category_reasoning.csv", summary["category_reasoning"])
    hist_rows = [
        {"column": col, "bin_lo": h["edges"][i], "bin_hi": h["edges"][i + 1], "on": h["on"][i], "off": h["off"][i]}
        for col, h in summary["histograms"].items()
        for i in range(N_BINS)
    ]
    _csv(out / "token_histograms.csv", hist_rows)
    plot(summary, out)
    return summary


def _csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = summary["funnel"]
    ax.barh([s["step"] for s in steps][::-1], [s["rows_after"] for s in steps][::-1], color="#4c72b0")
    ax.set_xlabel("rows remaining after the step")
    ax.set_title(f"Curation funnel: {steps[0]['rows_before']:,} raw rows -> {steps[-1]['rows_after']:,} training rows")
    fig.tight_layout()
    fig.savefig(out / "funnel.png", dpi=100, metadata={"Software": None})
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (col, h) in zip(axes, summary["histograms"].items(), strict=True):
        centers = (np.array(h["edges"][:-1]) + np.array(h["edges"][1:])) / 2
        width = h["edges"][1] - h["edges"][0]
        ax.bar(centers, h["on"], width=width, alpha=0.6, label="reasoning on")
        ax.bar(centers, h["off"], width=width, alpha=0.6, label="reasoning off")
        ax.set_xlabel(col)
        ax.set_ylabel("rows")
        ax.legend()
    fig.suptitle("Token counts of training.jsonl")
    fig.tight_layout()
    fig.savefig(out / "token_histograms.png", dpi=100, metadata={"Software": None})
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    cats = sorted({r["category"] for r in summary["category_reasoning"]})
    for k, bucket in enumerate(("on", "off")):
        n = [sum(r["rows"] for r in summary["category_reasoning"] if r["category"] == c and r["reasoning"] == bucket)
             for c in cats]
        ax.bar(np.arange(len(cats)) + k * 0.4, n, width=0.4, label=f"reasoning {bucket}")
    ax.set_xticks(np.arange(len(cats)) + 0.2, cats)
    ax.set_ylabel("rows")
    ax.set_title("training.jsonl by category and reasoning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "category_reasoning.png", dpi=100, metadata={"Software": None})
    plt.close(fig)
