"""Training data: an on-demand view of ``training.jsonl``, the sample order, packing.

- :class:`JsonlDataset` indexes line offsets once and tokenizes rows on demand, so a
  1.7 M-row file needs no more memory than its offset table.
- :func:`sample_order` is a pure function of the config (``sequential`` follows the
  curriculum; ``shuffle`` is a seeded permutation per epoch), so a resumed run that
  skips the samples it already consumed sees exactly what an uninterrupted run sees.
- Labels are ``-100`` on prompt tokens: loss on the answer (``output``) only.
- :func:`pack` fills rows of ``max_length`` tokens with consecutive samples, in order;
  ``position_ids`` restart at 0 for every sample, which makes transformers build a
  block-diagonal causal mask (no attention across samples).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class JsonlDataset:
    def __init__(self, path: str, tokenizer, max_length: int, overlong: str = "truncate"):
        if overlong not in ("truncate", "drop"):
            raise ValueError(f"train.overlong must be 'truncate' or 'drop', got {overlong!r}")
        self.path, self.tokenizer, self.max_length, self.overlong = path, tokenizer, max_length, overlong
        offsets, pos = [], 0
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        if not offsets:
            raise ValueError(f"{path} has no training rows")
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.truncated = self.dropped = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def row(self, i: int) -> dict:
        with open(self.path, "rb") as fh:
            fh.seek(int(self.offsets[i]))
            return json.loads(fh.readline())

    def example(self, i: int) -> Example | None:
        """Tokenized row ``i`` (prompt ids + answer ids, labels on the answer), or ``None`` if dropped."""
        row = self.row(i)
        tok = self.tokenizer
        prompt = tok(row["input"], add_special_tokens=False)["input_ids"]
        answer = tok(row["output"], add_special_tokens=False)["input_ids"]
        ids, labels = prompt + answer, [IGNORE] * len(prompt) + answer
        if len(ids) > self.max_length:
            if self.overlong == "drop" or len(prompt) >= self.max_length:
                self.dropped += 1
                return None
            self.truncated += 1
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return Example(ids, labels)


def sample_order(n: int, mode: str, seed: int) -> Iterator[int]:
    """Endless stream of row indices: epoch after epoch."""
    if mode not in ("sequential", "shuffle"):
        raise ValueError(f"train.data_order must be 'sequential' or 'shuffle', got {mode!r}")
    for epoch in itertools.count():
        if mode == "sequential":
            yield from range(n)
        else:
            yield from np.random.default_rng([seed, epoch]).permutation(n).tolist()


def pack(examples: list[Example], max_length: int, pad_id: int) -> list[dict]:
    """Greedy in-order packing into rows of exactly ``max_length`` tokens (padding at the end)."""
    return [padded_row(b, max_length, pad_id) for b in in_order(examples, max_length)]


def padded_row(examples: list[Example], length: int, pad_id: int) -> dict:
    """Samples back to back, padded to ``length``; positions restart at 0 per sample (and for the pad)."""
    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    pos = [p for e in examples for p in range(len(e))]
    pad = length - len(ids)
    return {
        "input_ids": ids + [pad_id] * pad,
        "labels": labels + [IGNORE] * pad,
        "position_ids": pos + list(range(pad)),
        "real_tokens": len(ids),
    }


def pad_batch(examples: list[Example], pad_id: int) -> dict:
    """One unpacked micro-batch, right-padded to its longest sample."""
    width = max(map(len, examples))
    return {
        "input_ids": [e.input_ids + [pad_id] * (width - len(e)) for e in examples],
        "labels": [e.labels + [IGNORE] * (width - len(e)) for e in examples],
        "attention_mask": [[1] * len(e) + [0] * (width - len(e)) for e in examples],
        "real_tokens": sum(map(len, examples)),
    }


def best_fit(examples: list[Example], capacity: int) -> list[list[Example]]:
    """Best-fit decreasing bins of at most ``capacity`` tokens (deterministic: ties by position).

    All samples of one optimizer step share one gradient, so their grouping into rows is
    free: tighter rows only remove padding.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i])
        fits = [b for b in range(len(bins)) if free[b] >= n]
        if fits:
            b = min(fits, key=lambda b: (free[b], b))
            bins[b].append(i)
            free[b] -= n
        else:
            bins.append([i])
            free.append(capacity - n)
    return [[examples[i] for i in sorted(b)] for b in bins]


def in_order(examples: list[Example], capacity: int) -> list[list[Example]]:
    """Greedy in-order bins (what :func:`pack` does, without the padding)."""
    bins, cur, used = [], [], 0
    for ex in examples:
        if cur and used + len(ex) > capacity:
            bins.append(cur)
            cur, used = [], 0
        cur.append(ex)
        used += len(ex)
    if cur:
        bins.append(cur)
    return bins


def varlen_batch(examples: list[Example]) -> dict:
    """One flattened micro-batch: samples back to back, no padding, sample boundaries kept.

    ``bounds`` are the cumulative sample offsets (``cu_seqlens``); positions restart at 0
    per sample.
    """
    bounds = [0]
    for e in examples:
        bounds.append(bounds[-1] + len(e))
    return {
        "input_ids": [t for e in examples for t in e.input_ids],
        "labels": [t for e in examples for t in e.labels],
        "position_ids": [p for e in examples for p in range(len(e))],
        "bounds": bounds,
        "max_seqlen": max(map(len, examples)),
        "real_tokens": bounds[-1],
    }
