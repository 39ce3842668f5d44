"""Scoring: per-item CSV, summary, base-vs-adapter comparison and a bar chart.

Summary statistics for one (model, benchmark, mode), over ``n`` items and ``k`` repeats:

* ``accuracy`` = correct answers / (n * k); a missing answer counts as not correct.
* ``stderr``: with ``k > 1`` repeats, the standard error of the mean over repeats,
  ``sd(acc_1..acc_k, ddof=1) / sqrt(k)`` where ``acc_r`` is the accuracy of repeat ``r``
  (``stderr_method = "repeats"``; it measures sampling noise for this fixed item set). With
  ``k == 1``, the binomial standard error over items ``sqrt(p * (1 - p) / n)``
  (``stderr_method = "binomial"``).
* ``no_answer_rate`` = share of (item, repeat) with no extracted letter (errors included).
* ``mean_completion_tokens`` over the answers that report usage; ``latency_p50_s`` /
  ``latency_p95_s``: linear-interpolated percentiles of per-request latency.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ..steps import step_of
from .extract import extract

ITEM_COLUMNS = [
    "model", "benchmark", "mode", "id", "subject", "repeat", "expected", "extracted", "rule", "think",
    "correct", "no_answer", "completion_tokens", "prompt_tokens", "latency_s", "finish_reason", "attempts",
    "error", "prompt_id", "extraction", "dataset_sha256", "response",
]
SUMMARY_COLUMNS = [
    "model", "benchmark", "mode", "n", "repeats", "accuracy", "stderr", "stderr_method", "no_answer_rate",
    "error_rate", "mean_completion_tokens", "latency_p50_s", "latency_p95_s", "dataset_sha256", "prompt_id",
    "extraction",
]


def score_records(
    items: Iterable[dict],
    records: Iterable[dict],
    *,
    model: str,
    benchmark: str,
    mode: str,
    prompt_id: str,
    dataset_sha256: str,
    extraction: str = "robust",
) -> pd.DataFrame:
    """One row per (item, repeat): the expected letter, the extraction and the response."""
    by_id = {it["id"]: it for it in items}
    rows = []
    for rec in records:
        item = by_id[rec["id"]]
        ex = extract(rec.get("text") or "", extraction)
        rows.append(
            {
                "model": model, "benchmark": benchmark, "mode": mode, "id": rec["id"], "subject": item["subject"],
                "repeat": int(rec["repeat"]), "expected": item["answer"], "extracted": ex.letter or "",
                "rule": ex.rule or "", "think": ex.think, "correct": int(ex.letter == item["answer"]),
                "no_answer": int(ex.letter is None), "completion_tokens": rec.get("completion_tokens"),
                "prompt_tokens": rec.get("prompt_tokens"), "latency_s": rec.get("latency_s"),
                "finish_reason": rec.get("finish_reason") or "", "attempts": rec.get("attempts"),
                "error": rec.get("error") or "", "prompt_id": prompt_id, "extraction": extraction,
                "dataset_sha256": dataset_sha256, "response": rec.get("text") or "",
            }
        )
    df = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    return df.sort_values(["id", "repeat"], kind="stable").reset_index(drop=True)


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # every text field quoted: a lone "\r" in a model's answer is no line end to the csv module (so
    # QUOTE_MINIMAL leaves it bare) but is one to pandas' reader, which would split the row in two
    df.to_csv(path, index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)


def read_item_csvs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    text = {c: str for c in ("extracted", "rule", "think", "finish_reason", "error", "response", "subject", "id")}
    frames = [pd.read_csv(p, keep_default_na=False, na_values={"completion_tokens": [""], "prompt_tokens": [""],
                                                               "latency_s": [""], "attempts": [""]}, dtype=text)
              for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ITEM_COLUMNS)


def accuracy_stderr(correct: pd.Series, repeat: pd.Series) -> tuple[float, float, str]:
    """Accuracy and its standard error (see the module docstring for which one)."""
    acc = float(correct.mean())
    per_repeat = correct.groupby(repeat).mean()
    k = len(per_repeat)
    if k > 1:
        return acc, float(per_repeat.std(ddof=1) / math.sqrt(k)), "repeats"
    n = len(correct)
    return acc, math.sqrt(acc * (1 - acc) / n) if n else float("nan"), "binomial"


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, bench, mode), g in df.groupby(["model", "benchmark", "mode"], sort=True):
        acc, se, method = accuracy_stderr(g["correct"].astype(float), g["repeat"])
        lat = pd.to_numeric(g["latency_s"], errors="coerce").dropna().to_numpy()
        tok = pd.to_numeric(g["completion_tokens"], errors="coerce").dropna()
        errors = g["error"].astype("string").fillna("").str.len() > 0
        rows.append(
            {
                "model": model, "benchmark": bench, "mode": mode, "n": g["id"].nunique(),
                "repeats": g["repeat"].nunique(), "accuracy": acc, "stderr": se, "stderr_method": method,
                "no_answer_rate": float(g["no_answer"].mean()), "error_rate": float(errors.mean()),
                "mean_completion_tokens": float(tok.mean()) if len(tok) else float("nan"),
                "latency_p50_s": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
                "latency_p95_s": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
                "dataset_sha256": _one(g["dataset_sha256"]), "prompt_id": _one(g["prompt_id"]),
                "extraction": _one(g["extraction"]),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _one(col: pd.Series) -> str:
    vals = sorted(set(col.astype(str)))
    return vals[0] if len(vals) == 1 else "|".join(vals)


def compare(summary: pd.DataFrame, baseline: str = "base") -> pd.DataFrame:
    """Every other model against ``baseline`` per (benchmark, mode): values and deltas (model - baseline)."""
    cols = ["benchmark", "mode", "baseline", "model", "n", "baseline_accuracy", "model_accuracy", "delta_accuracy",
            "delta_stderr", "baseline_no_answer_rate", "model_no_answer_rate", "delta_no_answer_rate",
            "baseline_mean_completion_tokens", "model_mean_completion_tokens", "delta_mean_completion_tokens",
            "same_dataset"]
    base = summary[summary["model"] == baseline].set_index(["benchmark", "mode"])
    rows = []
    for _, r in summary[summary["model"] != baseline].iterrows():
        key = (r["benchmark"], r["mode"])
        if key not in base.index:
            continue
        b = base.loc[key]
        rows.append(
            {
                "benchmark": key[0], "mode": key[1], "baseline": baseline, "model": r["model"], "n": r["n"],
                "baseline_accuracy": b["accuracy"], "model_accuracy": r["accuracy"],
                "delta_accuracy": r["accuracy"] - b["accuracy"],
                "delta_stderr": math.sqrt(b["stderr"] ** 2 + r["stderr"] ** 2),
                "baseline_no_answer_rate": b["no_answer_rate"], "model_no_answer_rate": r["no_answer_rate"],
                "delta_no_answer_rate": r["no_answer_rate"] - b["no_answer_rate"],
                "baseline_mean_completion_tokens": b["mean_completion_tokens"],
                "model_mean_completion_tokens": r["mean_completion_tokens"],
                "delta_mean_completion_tokens": r["mean_completion_tokens"] - b["mean_completion_tokens"],
                "same_dataset": b["dataset_sha256"] == r["dataset_sha256"],
            }
        )
    return pd.DataFrame(rows, columns=cols).sort_values(["benchmark", "mode", "model"]).reset_index(drop=True)


def plot(summary: pd.DataFrame, path: str | os.PathLike, title: str = "Accuracy by benchmark and reasoning mode") -> None:
    """Grouped bars: one group per (benchmark, mode), one bar per model, std-err whiskers, chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(b, m) for b, m in zip(summary["benchmark"], summary["mode"])})
    models = sorted(summary["model"].unique())
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 4.5))
    x = np.arange(len(groups))
    for j, model in enumerate(models):
        sub = summary[summary["model"] == model].set_index(["benchmark", "mode"])
        acc = [100 * sub.loc[g, "accuracy"] if g in sub.index else np.nan for g in groups]
        err = [100 * sub.loc[g, "stderr"] if g in sub.index else np.nan for g in groups]
        bars = ax.bar(x + (j - (len(models) - 1) / 2) * width, acc, width, yerr=err, capsize=3, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.axhline(25, color="grey", lw=0.8, ls="--", label="chance (25%)")
    ax.set_xticks(x, [f"{b}\nthinking {m}" for b, m in groups], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


STEP_COLUMNS = ["benchmark", "mode", "step", "model", "n", "accuracy", "stderr", "no_answer_rate",
                "baseline", "baseline_accuracy", "baseline_no_answer_rate"]


def step_curve(summary: pd.DataFrame, baseline: str = "base", final_step: int | None = None) -> pd.DataFrame:
    """Accuracy and no-answer rate against training step, per (benchmark, mode): the ``step-N``
    models at step N and every other non-baseline model (the final adapter) at ``final_step``, each
    beside the baseline's values (the reference line)."""
    base = summary[summary["model"] == baseline].set_index(["benchmark", "mode"])
    rows = []
    for _, r in summary[summary["model"] != baseline].iterrows():
        step = step_of(r["model"])
        step = final_step if step is None else step
        if step is None:
            continue
        key = (r["benchmark"], r["mode"])
        b = base.loc[key] if key in base.index else None
        rows.append({"benchmark": key[0], "mode": key[1], "step": step, "model": r["model"], "n": r["n"],
                     "accuracy": r["accuracy"], "stderr": r["stderr"], "no_answer_rate": r["no_answer_rate"],
                     "baseline": baseline,
                     "baseline_accuracy": b["accuracy"] if b is not None else float("nan"),
                     "baseline_no_answer_rate": b["no_answer_rate"] if b is not None else float("nan")})
    return (pd.DataFrame(rows, columns=STEP_COLUMNS).sort_values(["benchmark", "mode", "step"])
            .reset_index(drop=True))


def plot_steps(curve: pd.DataFrame, path: str | os.PathLike, title: str = "Accuracy against training step") -> None:
    """Two panels (accuracy with std-err, no-answer rate) against step: one line per (benchmark,
    mode), the baseline as a dashed line of the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = sorted({(b, m) for b, m in zip(curve["benchmark"], curve["mode"])})
    for i, (bench, mode) in enumerate(groups):
        g = curve[(curve["benchmark"] == bench) & (curve["mode"] == mode)]
        color = f"C{i % 10}"
        label = f"{bench}, thinking {mode}"
        axes[0].errorbar(g["step"], 100 * g["accuracy"], yerr=100 * g["stderr"], marker="o", color=color,
                         capsize=3, label=label)
        axes[1].plot(g["step"], 100 * g["no_answer_rate"], marker="o", color=color, label=label)
        for ax, col in ((axes[0], "baseline_accuracy"), (axes[1], "baseline_no_answer_rate")):
            ax.axhline(100 * g[col].iloc[0], color=color, ls="--", lw=0.8)
    axes[0].axhline(25, color="grey", lw=0.8, ls=":", label="chance (25%)")
    for ax, ylabel in ((axes[0], "accuracy (%)"), (axes[1], "no-answer rate (%)")):
        ax.set_xlabel("training step (dashed: base model)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def report(item_csvs: Iterable[str | os.PathLike], out_summary, out_comparison, out_png, baseline: str = "base",
           step_csvs: Iterable[str | os.PathLike] = (), out_steps=None, out_steps_png=None,
           final_step: int | None = None) -> pd.DataFrame:
    """summary.csv, comparison.csv and the bar chart of ``item_csvs`` (evaluate.models); with
    ``out_steps``, the accuracy-against-step table and plot of ``step_csvs`` plus the final adapter."""
    df = read_item_csvs(item_csvs)
    summary = summarize(df)
    write_csv(summary, out_summary)
    write_csv(compare(summary, baseline), out_comparison)
    plot(summary, out_png)
    if out_steps is not None:
        steps = list(step_csvs)
        both = pd.concat([summary, summarize(read_item_csvs(steps))]) if steps else summary
        curve = step_curve(both, baseline, final_step)
        write_csv(curve, out_steps)
        if out_steps_png is not None:
            plot_steps(curve, out_steps_png)
    return summary
