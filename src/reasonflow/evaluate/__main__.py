"""Command line for the evaluation pieces (the Snakemake scripts call the same functions).

    python -m reasonflow.evaluate prep mmlu resources/demo/eval/mmlu/data.tar out.jsonl out.json --subjects stem
    python -m reasonflow.evaluate run --url http://127.0.0.1:8000 --items out.jsonl --meta out.json \
        --out items.csv --cache cache.jsonl --model base --served-model base --benchmark mmlu --mode on
    python -m reasonflow.evaluate report items1.csv items2.csv --summary s.csv --comparison c.csv --plot p.png
"""

from __future__ import annotations

import argparse
import json
import logging

from . import prep, score
from .job import EvalSettings, evaluate


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m reasonflow.evaluate")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prep", help="raw benchmark file -> items JSONL + sidecar")
    p.add_argument("benchmark", choices=["mmlu", "gpqa_main", "gpqa_diamond"])
    p.add_argument("source")
    p.add_argument("out_jsonl")
    p.add_argument("out_meta")
    p.add_argument("--sha256")
    p.add_argument("--subjects", default="stem")
    p.add_argument("--seed", type=int, default=prep.DEFAULT_SEED)
    p.add_argument("--cache-dir", default="resources/eval/downloads")

    r = sub.add_parser("run", help="ask one (model, benchmark, mode) and write the per-item CSV")
    r.add_argument("--url", required=True)
    r.add_argument("--items", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--run-json")
    r.add_argument("--cache")
    r.add_argument("--model", default="model", help="label used in the results")
    r.add_argument("--served-model", default=None, help="model name sent to the server (default: --model)")
    r.add_argument("--benchmark", default="bench")
    r.add_argument("--mode", choices=["on", "off"], default="on")
    r.add_argument("--settings", default="{}", help="JSON of EvalSettings fields (+ temperature/top_p/max_tokens/seed)")
    r.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("report", help="summary, comparison and plot from per-item CSVs")
    s.add_argument("csvs", nargs="+")
    s.add_argument("--summary", required=True)
    s.add_argument("--comparison", required=True)
    s.add_argument("--plot", required=True)
    s.add_argument("--baseline", default="base")

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "prep":
        side = prep.prepare(args.benchmark, args.source, args.out_jsonl, args.out_meta, sha256=args.sha256,
                            subjects=args.subjects, seed=args.seed, cache_dir=args.cache_dir)
        print(json.dumps({"n": side["n"], "sha256": side["sha256"]}))
    elif args.cmd == "run":
        run = evaluate(
            args.url, args.items, args.meta, args.out, model_label=args.model,
            served_model=args.served_model or args.model, benchmark=args.benchmark, mode=args.mode,
            settings=EvalSettings.from_config(json.loads(args.settings)), cache_path=args.cache,
            out_run_json=args.run_json, progress=not args.no_progress,
        )
        print(json.dumps({k: run[k] for k in ("accuracy", "no_answer_rate", "n_items", "stats")}))
    else:
        summary = score.report(args.csvs, args.summary, args.comparison, args.plot, args.baseline)
        print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
