"""Evaluation client throughput: concurrent (default 16 in flight) vs one request at a time, in one run.

Both passes send the same questions with the same settings to the same endpoint, without the
response cache; a warm-up request goes first. Prints questions/s of each pass and their ratio.

    .venv/bin/python bench/eval_client_speed.py http://127.0.0.1:8000 --model base [--n 64] [--max-tokens 256]

Questions default to the demo MMLU set (resources/demo/eval/mmlu/data.tar, all subjects); pass
``--items`` to use a prepared JSONL instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from reasonflow.evaluate import prep
from reasonflow.evaluate.client import ChatClient, Sampling, build_payload, run_items
from reasonflow.evaluate.extract import extract

REPO = Path(__file__).resolve().parents[1]


def load_items(path: str | None, n: int) -> list[dict]:
    if path:
        items = prep.read_items(path)
    else:
        items, _ = prep.mmlu_items(REPO / "resources/demo/eval/mmlu/data.tar", "all")
    if len(items) < n:  # repeat the set with new ids to reach n questions
        items = [{**it, "id": f"{it['id']}#{k}"} for k in range(-(-n // len(items))) for it in items]
    return items[:n]


def timed(items, client, args, concurrency: int) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    recs, _ = run_items(
        items, client, model=args.model, mode=args.mode, sampling=Sampling(temperature=args.temperature,
        max_tokens=args.max_tokens), concurrency=concurrency, cache=None, progress=False,
    )
    return time.perf_counter() - t0, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="base URL of the OpenAI-compatible endpoint")
    ap.add_argument("--model", default="base", help="served model name")
    ap.add_argument("--items", help="prepared items JSONL (default: demo MMLU)")
    ap.add_argument("--n", type=int, default=64, help="questions per pass")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mode", choices=["on", "off"], default="off")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    items = load_items(args.items, args.n)
    client = ChatClient(args.url, pool_size=max(args.concurrency, 8))
    client.complete(build_payload(items[0], 0, model=args.model, mode=args.mode, prompt_id="reference",
                                  sampling=Sampling(max_tokens=8)))  # warm-up
    seq_s, seq = timed(items, client, args, 1)
    con_s, con = timed(items, client, args, args.concurrency)
    seq_qps, con_qps = len(items) / seq_s, len(items) / con_s
    tokens = [r["completion_tokens"] or 0 for r in con]
    result = {
        "url": client.url, "model": args.model, "mode": args.mode, "n": len(items), "max_tokens": args.max_tokens,
        "sequential_s": round(seq_s, 3), "sequential_q_per_s": round(seq_qps, 3),
        "concurrency": args.concurrency, "concurrent_s": round(con_s, 3), "concurrent_q_per_s": round(con_qps, 3),
        "speedup": round(con_qps / seq_qps, 2), "mean_completion_tokens": round(sum(tokens) / len(tokens), 1),
        "answers_agree": sum(extract(a["text"]).letter == extract(b["text"]).letter for a, b in zip(seq, con)),
    }
    print(f"one at a time : {seq_qps:8.2f} questions/s ({len(items)} in {seq_s:.1f} s)")
    print(f"concurrency {args.concurrency:<2}: {con_qps:8.2f} questions/s ({len(items)} in {con_s:.1f} s)")
    print(f"ratio         : {con_qps / seq_qps:8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
