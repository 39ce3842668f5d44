"""Curation throughput: this pipeline's per-row work vs the reference tutorial's, in one run.

Both run in this process on the same parsed rows of the same shards (Ray start-up
and file parsing are excluded from both), repeated; the medians and their ratio are
printed, then how the two kept sets differ (only the documented fixes may differ).

    .venv/bin/python bench/curation_speed.py [--config config/demo.yaml] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import yaml
from nemo_curator.tasks import DocumentBatch, FileGroupTask

from reasonflow import chat
from reasonflow.curation.reference import reference_curate
from reasonflow.curation.run import CurationSettings, build_pipeline
from reasonflow.curation.stages import ReadShardStage
from reasonflow.langid import LanguageIdentifier, resolve_model_path
from reasonflow.split import write_shard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/reasonflow-bench")
    ap.add_argument("--small-kib", type=int, default=64, help="also time rows smaller than this")
    args = ap.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    raw = Path(cfg["data"]["raw_dir"])
    settings = CurationSettings.from_config(
        {**cfg["curation"], "tokenizer": cfg["model"].get("tokenizer") or cfg["model"]["base"]}
    )
    files = sorted(p for p in raw.rglob("*.jsonl") if any(s in p.as_posix() for s in cfg["data"]["file_filter"]))

    tasks = []  # one whole-file shard per selected file
    for i, path in enumerate(files):
        src = path.relative_to(raw).as_posix()
        shard, info = Path(args.workdir) / f"{i}.jsonl", Path(args.workdir) / f"{i}.json"
        write_shard(path, src, 0, path.stat().st_size + 1, shard, info)
        tasks.append(FileGroupTask(dataset_name=src, data=[str(shard), str(info)]))
    reader = ReadShardStage(chunk_rows=10**9)
    rows = pd.concat([reader.process(t)[0].to_pandas() for t in tasks], ignore_index=True)
    print(f"{len(rows)} valid rows from {len(files)} files ({', '.join(p.name for p in files)})")

    tok = chat.load_tokenizer(settings.tokenizer)
    lid = LanguageIdentifier(resolve_model_path(settings.language_model))
    stages = build_pipeline(settings).stages[1:]  # rows are parsed once, outside the timing
    for stage in stages:
        stage.setup()

    def ours(df):
        out = []
        for start in range(0, len(df), settings.chunk_rows):
            meta = {"chunk": start, "rows_in": 0, "rejects": [], "funnel": {}, "dropped": []}
            batch = DocumentBatch(dataset_name="bench", data=df.iloc[start : start + settings.chunk_rows], _metadata=meta)
            for stage in stages:
                batch = stage.process(batch)
            out.append(batch)
        return out

    def reference(df):
        return reference_curate(df, tok, lid, settings.max_tokens, settings.max_completion_tokens)

    def timed(fn, df):
        t0 = time.perf_counter()
        result = fn(df)
        return time.perf_counter() - t0, result

    row_bytes = rows["output"].str.len() + rows["input"].map(lambda m: sum(len(x["content"]) for x in m))
    sets = {"all rows": rows, f"rows under {args.small_kib} KiB": rows[row_bytes < args.small_kib * 1024]}
    for label, df in sets.items():
        ours_t, ref_t = [], []
        for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
            t, ours_out = timed(ours, df)
            ours_t.append(t)
            t, ref_out = timed(reference, df)
            ref_t.append(t)
        mo, mr = statistics.median(ours_t), statistics.median(ref_t)
        print(f"[{label}: {len(df)} rows]")
        print(f"  this pipeline : {len(df) / mo:10.1f} rows/s  (median {mo:.3f} s of {args.repeats})")
        print(f"  reference     : {len(df) / mr:10.1f} rows/s  (median {mr:.3f} s of {args.repeats})")
        print(f"  speed-up      : {mr / mo:10.2f}x")
        if label == "all rows":
            kept_check = (ours_out, ref_out)
    ours_out, ref_out = kept_check

    kept = {i for b in ours_out for i in b.data["id"]}
    dropped = {d[0]: (d[1], d[2]) for b in ours_out for d in b._metadata["dropped"]}
    ref_kept = set(ref_out["id"])
    print(f"kept: this pipeline {len(kept)}, reference {len(ref_kept)}, both {len(kept & ref_kept)}")
    only_ref = sorted(ref_kept - kept)
    by_filter: dict[str, int] = {}
    for i in only_ref:
        by_filter[dropped[i][0]] = by_filter.get(dropped[i][0], 0) + 1
    print(f"kept only by the reference: {len(only_ref)}, by our filter: {by_filter}")
    print(f"kept only by this pipeline: {len(kept - ref_kept)}")
    undocumented = [i for i in only_ref if dropped[i][0] not in ("boxed", "token_limits")] + sorted(kept - ref_kept)
    print("differences outside the documented fixes (boxed intent, exact token counts):", len(undocumented))
    if undocumented:
        raise SystemExit(f"unexpected differences: {undocumented[:10]}")


if __name__ == "__main__":
    main()
