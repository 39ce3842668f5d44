"""Curriculum merge with dask: curated shards -> one deterministic ``training.jsonl``.

Steps (all on a dask distributed local cluster sized to the job's threads; every step
is partition-wise or a shuffle, so the same code runs on data larger than memory):

1. read every kept shard (one partition each; empty shards are fine);
2. exact dedup of identical ``(input, output)`` pairs: the copy with the smallest
   ``(source file, byte offset)`` stays, the others are listed with the id they repeat;
3. decontamination: drop rows whose prompt shares an ``ngram``-word run with an
   evaluation question (listed with the question id): the prepared items of every
   benchmark the workflow evaluates, then the extra ``question_files``; the stats say
   how many questions each source contributed and how many rows it removed. With
   ``decontaminate`` on and no question at all, the merge refuses to run;
4. split by reasoning on/off and sort each bucket by ``completion_token_count`` with
   ``(source file, byte offset)`` as the tie-break, so the order depends on the data
   only (not on file listing order, partitioning or the number of workers);
5. optional ``max_samples`` cap: a stratified take from each sorted bucket keeping the
   on/off proportion;
6. interleave the buckets (``partition`` / ``row`` / ``ratio``, see
   :mod:`reasonflow.merge.interleave`) while streaming partitions to the output file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from reasonflow.merge import decontam
from reasonflow.merge.interleave import schedule, split_cap, stratified_take

KEPT_COLUMNS = ["id", "category", "reasoning", "input", "output", "token_count", "completion_token_count"]
STRING_COLUMNS = ["id", "category", "reasoning", "input", "output"]
TRAINING_FIELDS = ["id", "category", "reasoning", "input", "output", "token_count", "completion_token_count"]


@dataclass(frozen=True)
class MergeSettings:
    interleave: str = "ratio"
    partition_rows: int = 1000
    max_samples: int = 0
    dedup: bool = True
    decontaminate: bool = True
    ngram: int = 13
    question_files: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: dict) -> "MergeSettings":
        return cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})


def read_kept(path: str) -> pd.DataFrame:
    """One curated shard as a DataFrame with fixed columns, plus the sort key and content hash."""
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    df = pd.DataFrame(rows, columns=KEPT_COLUMNS)
    df["token_count"] = df["token_count"].astype("int64")
    df["completion_token_count"] = df["completion_token_count"].astype("int64")
    source_offset = df["id"].str.rsplit("@", n=1)
    df["key"] = [f"{s}\x00{int(o):020d}" for s, o in source_offset]
    df["h"] = [
        hashlib.blake2b(f"{i}\x00{o}".encode(), digest_size=16).hexdigest()
        for i, o in zip(df["input"], df["output"], strict=True)
    ]
    return df.astype({c: "str" for c in (*STRING_COLUMNS, "key", "h")})


def _flag_contaminated(df: pd.DataFrame, index: dict, n: int) -> pd.DataFrame:
    hits = [decontam.first_match(t, index, n) if index else None for t in df["input"]]
    return df.assign(contaminated_by=pd.Series(hits, index=df.index, dtype="str"))


def _order_key(df: pd.DataFrame) -> pd.Series:
    """Curriculum order as one sortable string: completion tokens (zero-padded), then source/offset."""
    return pd.Series(
        [f"{c:012d}\x01{k}" for c, k in zip(df["completion_token_count"], df["key"], strict=True)],
        index=df.index,
        dtype="str",
    )


def _id_of_key(key: str) -> str:
    source, offset = key.split("\x00")
    return f"{source}@{int(offset)}"


def _stream_sorted(parquet_dir: Path, n: int, k: int) -> Iterator[dict]:
    """Rows of a sorted bucket written by dask, part file by part file, keeping ``k`` of ``n``."""
    import pyarrow.parquet as pq

    wanted = iter(stratified_take(n, k)) if k < n else None
    nxt = next(wanted, None) if wanted else None
    rank = 0
    parts = sorted(parquet_dir.glob("part.*.parquet"), key=lambda p: int(p.name.split(".")[1]))
    for part in parts:
        for row in pq.read_table(part, columns=TRAINING_FIELDS).to_pylist():
            if wanted is None or rank == nxt:
                yield row
                if wanted is not None:
                    nxt = next(wanted, None)
            rank += 1


def merge(
    kept_files: list[str],
    settings: MergeSettings,
    out_training: str,
    out_duplicates: str,
    out_contaminated: str,
    out_stats: str,
    workdir: str,
    benchmarks: dict[str, str] | None = None,
    out_decontamination: str | None = None,
) -> dict:
    """Run the merge on the current dask client (see :class:`local_cluster`).

    ``benchmarks`` maps a benchmark name to its prepared items JSONL (``eval_prep``).
    ``workdir`` holds the staged and sorted Parquet copies (it can be deleted afterwards).
    ``out_decontamination``, if given, gets the per-source table as CSV.
    """
    import dask.dataframe as dd

    work = Path(workdir)
    ddf = dd.from_map(read_kept, sorted(kept_files), meta=read_kept(os.devnull))
    # exact dedup: the first copy (smallest source/offset key) of each (input, output) stays
    if settings.dedup:
        first = ddf.groupby("h")["key"].min().rename("first_key").reset_index()
        ddf = ddf.merge(first, on="h", how="left")
    else:
        ddf = ddf.assign(first_key=ddf["key"])
    questions = question_index(settings, benchmarks or {})
    index = questions.index
    meta = ddf._meta.assign(contaminated_by=pd.Series(dtype="str"))
    ddf = ddf.map_partitions(_flag_contaminated, index, settings.ngram, meta=meta)
    ddf.to_parquet(work / "staged", write_index=False, overwrite=True)

    staged = dd.read_parquet(work / "staged")
    rows_in = int(staged.shape[0].compute())
    dups = staged[staged["key"] != staged["first_key"]][["key", "first_key"]].compute().sort_values("key")
    dup_records = [{"id": _id_of_key(k), "duplicate_of": _id_of_key(f)} for k, f in dups.itertuples(index=False)]
    unique = staged[staged["key"] == staged["first_key"]]
    hit = unique[unique["contaminated_by"].notnull()][["key", "contaminated_by"]].compute().sort_values("key")
    cont_records = [{"id": _id_of_key(k), "question": q} for k, q in hit.itertuples(index=False)]
    clean = unique[unique["contaminated_by"].isnull()]

    sizes = {}
    for name in ("on", "off"):
        # set_index on one composite key is dask's global (range-partitioned) sort
        bucket = clean[clean["reasoning"] == name]
        bucket = bucket.assign(order=bucket.map_partitions(_order_key, meta=("order", "str"))).set_index("order")
        bucket.to_parquet(work / name, write_index=False, overwrite=True)
        sizes[name] = sum(pq_rows(p) for p in (work / name).glob("part.*.parquet"))
    k_on, k_off = split_cap(sizes["on"], sizes["off"], settings.max_samples)
    streams = {
        "on": _stream_sorted(work / "on", sizes["on"], k_on),
        "off": _stream_sorted(work / "off", sizes["off"], k_off),
    }
    written = {"on": 0, "off": 0}
    Path(out_training).parent.mkdir(parents=True, exist_ok=True)
    with open(out_training, "w", encoding="utf-8") as out:
        for take_on in schedule(k_on, k_off, settings.interleave, settings.partition_rows):
            name = "on" if take_on else "off"
            out.write(json.dumps(next(streams[name]), ensure_ascii=False) + "\n")
            written[name] += 1

    removed: dict[str, int] = {}
    for rec in cont_records:
        src = questions.source_of(rec["question"])
        removed[src] = removed.get(src, 0) + 1
    per_source = {src: {"kind": "benchmark" if src in (benchmarks or {}) else "file", "questions": n,
                        "rows_removed": removed.get(src, 0)} for src, n in questions.questions.items()}
    counts = {
        "rows_in": rows_in,
        "duplicates_dropped": len(dup_records),
        "contaminated_dropped": len(cont_records),
        "decontamination_ngrams": len(index),
        "decontamination": per_source,
        "after_dedup_decontam": sizes,
        "capped_dropped": sizes["on"] + sizes["off"] - k_on - k_off,
        "training_rows": {**written, "total": written["on"] + written["off"]},
    }
    accounted = len(dup_records) + len(cont_records) + counts["capped_dropped"] + counts["training_rows"]["total"]
    if accounted != rows_in:
        raise AssertionError(f"merge lost rows: {rows_in} in, {accounted} accounted for: {counts}")
    _write_jsonl(out_duplicates, dup_records)
    _write_jsonl(out_contaminated, cont_records)
    stats = {"settings": asdict(settings), "counts": counts}
    Path(out_stats).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    if out_decontamination:
        table = pd.DataFrame([{"source": k, **v} for k, v in per_source.items()],
                             columns=["source", "kind", "questions", "rows_removed"])
        table.to_csv(out_decontamination, index=False)
    return stats


def question_index(settings: MergeSettings, benchmarks: dict[str, str]) -> decontam.QuestionIndex:
    """Every question the training rows are checked against: the evaluated benchmarks' prepared
    items (sorted by name), then each extra question file. Empty when decontamination is off."""
    qi = decontam.QuestionIndex(settings.ngram)
    if not settings.decontaminate:
        return qi
    for name in sorted(benchmarks):
        qi.add(name, decontam.read_prepared(benchmarks[name], name))
    for path in settings.question_files:
        qi.add(path, decontam.read_questions([path]))
    if not len(qi):
        raise ValueError(
            "merge.decontaminate is true but there is no question to check against: evaluate.benchmarks "
            f"gave {sorted(benchmarks) or 'no prepared file'} and merge.question_files lists "
            f"{settings.question_files or 'none'} (with no question in them); add a benchmark or a question "
            "file, or set merge.decontaminate: false")
    return qi


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


class local_cluster:  # noqa: N801 (used as a context manager)
    """A dask distributed LocalCluster + Client sized to the job (``workers`` processes)."""

    def __init__(self, workers: int, memory_limit: str = "auto"):
        self.workers, self.memory_limit = max(1, workers), memory_limit

    def __enter__(self):
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=self.memory_limit,
        )
        self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        self.cluster.close()
