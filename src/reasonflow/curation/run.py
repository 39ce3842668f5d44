"""Run the curation pipeline on one shard and write its four outputs.

Outputs (all deterministic for a given shard and configuration):

- ``kept``: JSONL, rows in shard order: id, category, reasoning, input, output,
  token_count, completion_token_count;
- ``dropped``: JSONL, ``{"id", "filter", "reason"}`` per filtered row;
- ``rejects``: JSONL, ``{"id", "reason", "raw"[, "raw_base64"]}`` per malformed line;
- ``stats``: JSON with rows_in, kept, dropped per filter (in filter order), rejected
  (total and per category) and the conservation check, which is asserted.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from reasonflow.curation import filters as F
from reasonflow.langid import resolve_model_path
from reasonflow.split import ShardInfo


@dataclass(frozen=True)
class CurationSettings:
    tokenizer: str
    boxed_mode: str = "intent"
    token_count_mode: str = "exact"
    max_tokens: int = 16384
    max_completion_tokens: int = 8192
    language_label: str = "__label__en"
    language_min_prob: float = 0.0
    language_model: str = "bundled"
    chunk_rows: int = 1000

    @classmethod
    def from_config(cls, cfg: dict) -> "CurationSettings":
        known = {k: v for k, v in cfg.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ConservationError(AssertionError):
    pass


def build_pipeline(settings: CurationSettings):
    from nemo_curator.pipeline import Pipeline

    from reasonflow.curation import stages as S

    lid_path = str(resolve_model_path(settings.language_model))
    pipeline = Pipeline(
        name="reasonflow_curation", description="RECIPE.md section 2 on one shard, filters in order"
    )
    for stage in (
        S.ReadShardStage(chunk_rows=settings.chunk_rows),
        S.NanoFilterStage(),
        S.EmptyThinkFilterStage(),
        S.BoxedFilterStage(settings.boxed_mode),
        S.ThinkTagsFilterStage(),
        S.ChatTemplateStage(settings.tokenizer),
        S.LanguageFilterStage(lid_path, settings.language_label, settings.language_min_prob),
        S.TokenLimitsFilterStage(
            settings.tokenizer, settings.max_tokens, settings.max_completion_tokens, settings.token_count_mode
        ),
        S.FormatStage(),
    ):
        pipeline.add_stage(stage)
    return pipeline


def ray_logical_cpus(pipeline, num_cpus: int) -> int:
    """Logical CPUs for Ray: the job's threads plus one per actor stage.

    Ray Data keeps one long-lived actor (1 CPU reserved) per stage that loads a model
    (tokenizer, fastText); with fewer logical CPUs than actor stages + 1 the streaming
    executor waits forever for the last actor. Actors sit idle most of the time, so
    the extra logical CPUs do not oversubscribe the job's cores in practice.
    """
    from nemo_curator.backends.ray_data.utils import is_actor_stage

    return max(1, num_cpus) + sum(is_actor_stage(s) for s in pipeline.stages)


def start_ray(logical_cpus: int) -> None:
    """Start a private local Ray instance for this job (the executor reuses it)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=logical_cpus, include_dashboard=False, log_to_driver=True)


def run_pipeline(shard_path: str, info_path: str, settings: CurationSettings, num_cpus: int = 1):
    """Execute the Curator pipeline with Ray Data; return output batches in shard order."""
    from nemo_curator.backends.ray_data import RayDataExecutor
    from nemo_curator.tasks import FileGroupTask

    pipeline = build_pipeline(settings)
    start_ray(ray_logical_cpus(pipeline, num_cpus))
    source = ShardInfo.read(info_path).source
    task = FileGroupTask(dataset_name=source, data=[str(shard_path), str(info_path)])
    out = pipeline.run(RayDataExecutor(), initial_tasks=[task]) or []
    return sorted(out, key=lambda b: b._metadata["chunk"])


def _jsonl_line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def summarize(batches, info: ShardInfo, settings: CurationSettings) -> dict:
    rows_in = sum(b._metadata["rows_in"] for b in batches)
    kept = sum(len(b.data) for b in batches)
    dropped = {name: sum(b._metadata["funnel"].get(name, 0) for b in batches) for name in F.FILTER_ORDER}
    reasons = Counter(r["reason"].split(":", 1)[0] for b in batches for r in b._metadata["rejects"])
    rejected = sum(reasons.values())
    stats = {
        "source": info.source,
        "shard": info.index,
        "rows_in": rows_in,
        "kept": kept,
        "dropped": dropped,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "conservation": {
            "rows_in": rows_in,
            "kept_plus_dropped_plus_rejected": kept + sum(dropped.values()) + rejected,
        },
        "kept_by_reasoning": dict(
            sorted(Counter(r for b in batches for r in b.data["reasoning"]).items())
        ),
        "settings": asdict(settings),
    }
    ok = rows_in == kept + sum(dropped.values()) + rejected and rows_in == info.lines
    stats["conservation"]["ok"] = ok
    if not ok:
        raise ConservationError(
            f"shard {info.source}#{info.index}: rows_in={rows_in} (shard has {info.lines} lines) but "
            f"kept {kept} + dropped {sum(dropped.values())} + rejected {rejected} differ"
        )
    return stats


def write_outputs(batches, info: ShardInfo, settings: CurationSettings, kept, dropped, rejects, stats) -> dict:
    paths = [Path(p) for p in (kept, dropped, rejects, stats)]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(batches, info, settings)
    with open(kept, "w", encoding="utf-8") as fk, open(dropped, "w", encoding="utf-8") as fd, open(
        rejects, "w", encoding="utf-8"
    ) as fr:
        for b in batches:
            for row in b.data.to_dict(orient="records"):
                row["token_count"] = int(row["token_count"])
                row["completion_token_count"] = int(row["completion_token_count"])
                fk.write(_jsonl_line(row))
            for row_id, name, reason in sorted(b._metadata["dropped"], key=lambda d: _offset(d[0])):
                fd.write(_jsonl_line({"id": row_id, "filter": name, "reason": reason}))
            for rec in b._metadata["rejects"]:
                fr.write(_jsonl_line(rec))
    Path(stats).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return summary


def _offset(row_id: str) -> int:
    return int(row_id.rsplit("@", 1)[1])


def curate_shard(
    shard: str, info: str, settings: CurationSettings, kept: str, dropped: str, rejects: str, stats: str, num_cpus=1
) -> dict:
    """Curate one shard end to end; return the stats dict (also written to ``stats``)."""
    shard_info = ShardInfo.read(info)
    # A shard with no lines (a byte range inside one long line) needs no Ray instance.
    batches = run_pipeline(shard, info, settings, num_cpus=num_cpus) if shard_info.lines else []
    return write_outputs(batches, shard_info, settings, kept, dropped, rejects, stats)
