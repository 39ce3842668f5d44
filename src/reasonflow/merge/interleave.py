"""Curriculum interleaving of the two sorted buckets (reasoning on / off), and the stratified cap.

All three modes are schedules: given how many rows of each bucket were taken so far,
which bucket comes next. They depend only on the bucket sizes, so the merged order is a
pure function of the (deterministically) sorted buckets.

- ``partition``: alternate blocks of ``block`` rows, ``on`` first (the Dask reference
  interleaves sorted partitions; its Ray port uses blocks of ``chunk_size`` rows); when
  one bucket runs out the other continues.
- ``row``: ``partition`` with blocks of one row (the Ray port's default). With unequal
  buckets every row of the smaller one ends up near the start.
- ``ratio``: keep the on/off proportion constant along the file: the next row is the one
  whose relative position ``(i + 1/2) / n`` in its bucket is smaller (``on`` on ties).
"""

from __future__ import annotations

from collections.abc import Iterator

MODES = ("partition", "row", "ratio")


def schedule(n_on: int, n_off: int, mode: str, block: int = 1) -> Iterator[bool]:
    """Yield ``True`` (take the next ``on`` row) or ``False`` (next ``off`` row), n_on + n_off times."""
    if mode not in MODES:
        raise ValueError(f"merge.interleave must be one of {MODES}, got {mode!r}")
    if mode == "row":
        mode, block = "partition", 1
    if block < 1:
        raise ValueError(f"merge.partition_rows must be >= 1, got {block}")
    i = j = 0
    while i < n_on or j < n_off:
        if mode == "ratio":
            take_on = i < n_on and (j >= n_off or (2 * i + 1) * n_off <= (2 * j + 1) * n_on)
            yield take_on
            i, j = (i + 1, j) if take_on else (i, j + 1)
            continue
        run = min(block, n_on - i)  # partition: a block of on, then a block of off
        yield from [True] * run
        i += run
        run = min(block, n_off - j)
        yield from [False] * run
        j += run


def stratified_take(n: int, k: int) -> list[int]:
    """``k`` of ``n`` sorted positions, evenly spread (keeps the difficulty distribution)."""
    if k >= n:
        return list(range(n))
    return [((2 * j + 1) * n) // (2 * k) for j in range(k)]


def split_cap(n_on: int, n_off: int, max_samples: int | None) -> tuple[int, int]:
    """How many rows of each bucket a cap of ``max_samples`` keeps (same on/off proportion)."""
    n = n_on + n_off
    if not max_samples or max_samples >= n:
        return n_on, n_off
    k_on = round(max_samples * n_on / n)
    return k_on, max_samples - k_on
