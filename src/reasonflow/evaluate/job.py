"""One evaluation job: (model, benchmark, mode) against an already running endpoint."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .client import ChatClient, Sampling, run_items
from .prep import read_items
from .score import score_records, write_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    prompt_id: str = "reference"
    repeats: int = 1
    concurrency: int = 16
    sampling: Sampling = field(default_factory=Sampling)
    extraction: str = "robust"  # robust | reference
    timeout_s: float = 900.0
    retries: int = 6
    backoff_s: float = 1.0
    on_error: str = "raise"  # raise | record
    limit: int = 0  # 0 = every item; else the first `limit` items by id (smoke runs)

    @classmethod
    def from_config(cls, cfg: dict | None) -> EvalSettings:
        cfg = dict(cfg or {})
        sampling = Sampling.from_config(
            {k: cfg.pop(k) for k in ("temperature", "top_p", "max_tokens", "seed", "ignore_eos") if k in cfg}
        )
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown evaluation settings {sorted(unknown)}")
        return cls(sampling=sampling, **cfg)


def evaluate(
    base_url: str,
    items_path: str | os.PathLike,
    meta_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    model_label: str,
    served_model: str,
    benchmark: str,
    mode: str,
    settings: EvalSettings,
    cache_path: str | os.PathLike | None,
    out_run_json: str | os.PathLike | None = None,
    progress: bool = True,
    api_key: str | None = None,
    model_fingerprint: str = "",
) -> dict:
    """Ask, cache, extract, score; write the per-item CSV (and a run summary JSON). Returns the latter."""
    items = read_items(items_path)
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    if settings.limit:
        items = items[: settings.limit]
    client = ChatClient(
        base_url, timeout=settings.timeout_s, retries=settings.retries, backoff=settings.backoff_s,
        pool_size=max(8, settings.concurrency), api_key=api_key,
    )
    records, stats = run_items(
        items, client, model=served_model, mode=mode, prompt_id=settings.prompt_id, sampling=settings.sampling,
        repeats=settings.repeats, cache=cache_path, concurrency=settings.concurrency, on_error=settings.on_error,
        progress=progress, desc=f"{model_label}/{benchmark}/{mode}", cache_salt=model_fingerprint,
    )
    df = score_records(
        items, records, model=model_label, benchmark=benchmark, mode=mode, prompt_id=settings.prompt_id,
        dataset_sha256=meta["sha256"], extraction=settings.extraction,
    )
    write_csv(df, out_csv)
    run = {
        "model": model_label, "served_model": served_model, "benchmark": benchmark, "mode": mode,
        "url": client.url, "model_fingerprint": model_fingerprint, "dataset_sha256": meta["sha256"], "n_items": len(items),
        "accuracy": float(df["correct"].mean()) if len(df) else float("nan"),
        "no_answer_rate": float(df["no_answer"].mean()) if len(df) else float("nan"),
        "questions_per_s": stats.asked / stats.wall_s if stats.wall_s and stats.asked else None,
        "settings": {**asdict(settings)}, "stats": stats.as_dict(),
    }
    log.info("%s/%s/%s: accuracy %.4f over %d rows (%s)", model_label, benchmark, mode, run["accuracy"], len(df), stats)
    if out_run_json:
        Path(out_run_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_run_json).write_text(json.dumps(run, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return run


def model_fingerprint(paths) -> str:
    """Stable digest of model files by (relative path, size, mtime): changes when the weights are rewritten.

    It salts the response cache, so a retrained adapter (which Snakemake reruns the evaluation for)
    never reuses answers of the previous one. Cheap for 16 GB checkpoints (no content hashing).
    """
    import hashlib

    h = hashlib.sha256()
    for root in sorted(map(Path, paths)):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            st = p.stat()
            rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
            h.update(f"{root.name}/{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
