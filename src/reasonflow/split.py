"""Line-aligned, byte-range sharding of large JSONL files.

Shard ``i`` of a file holds every line whose *first byte* lies in
``[i * shard_bytes, (i + 1) * shard_bytes)``. The number of shards therefore
depends only on the file size (known when Snakemake builds the DAG, so the
whole job graph is visible in a dry run, no checkpoint needed), every line lands
in exactly one shard, and each shard can be cut independently by seeking into
the file and streaming, never holding more than one line in memory.

A line longer than ``shard_bytes`` simply leaves the shards it spans empty.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

_BUF = 1 << 20


def shard_count(file_size: int, shard_bytes: int) -> int:
    """Number of shards for a file of ``file_size`` bytes (at least one)."""
    if shard_bytes <= 0:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    return max(1, math.ceil(file_size / shard_bytes))


@dataclass(frozen=True)
class ShardInfo:
    """Where a shard's lines came from; written next to the shard as JSON."""

    source: str  # path of the raw file relative to the raw root, e.g. SFT/chat/chat.jsonl
    index: int
    shard_bytes: int
    first_offset: int  # byte offset in the raw file of the shard's first line
    lines: int
    bytes: int  # bytes of the shard file (each line plus its newline)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ShardInfo":
        with open(path, encoding="utf-8") as fh:
            return cls(**json.load(fh))


def _seek_to_line_start(fh, start: int) -> None:
    """Position ``fh`` at the first line that starts at or after ``start``."""
    if start == 0:
        fh.seek(0)
        return
    fh.seek(start - 1)
    if fh.read(1) != b"\n":
        fh.readline()  # the line straddling `start` belongs to an earlier shard


def iter_shard_lines(path: str | os.PathLike, index: int, shard_bytes: int):
    """Yield ``(offset, line_bytes_without_newline)`` for the lines of one shard."""
    start, stop = index * shard_bytes, (index + 1) * shard_bytes
    with open(path, "rb", buffering=_BUF) as fh:
        _seek_to_line_start(fh, start)
        while True:
            offset = fh.tell()
            if offset >= stop:
                return
            line = fh.readline()
            if not line:
                return
            yield offset, line[:-1] if line.endswith(b"\n") else line


def write_shard(
    raw_path: str | os.PathLike,
    source: str,
    index: int,
    shard_bytes: int,
    out_path: str | os.PathLike,
    info_path: str | os.PathLike,
) -> ShardInfo:
    """Cut shard ``index`` of ``raw_path`` into ``out_path`` (streaming) and describe it."""
    n_shards = shard_count(os.path.getsize(raw_path), shard_bytes)
    if not 0 <= index < n_shards:
        raise ValueError(f"shard index {index} out of range for {raw_path} ({n_shards} shards of {shard_bytes} B)")
    first_offset, lines, written = index * shard_bytes, 0, 0
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out_path) + ".part")
    with open(tmp, "wb", buffering=_BUF) as out:
        for offset, line in iter_shard_lines(raw_path, index, shard_bytes):
            if lines == 0:
                first_offset = offset
            out.write(line)
            out.write(b"\n")
            lines += 1
            written += len(line) + 1
    os.replace(tmp, out_path)
    info = ShardInfo(source, index, shard_bytes, first_offset, lines, written)
    Path(info_path).write_text(info.to_json(), encoding="utf-8")
    return info


def iter_lines_with_offsets(shard_path: str | os.PathLike, first_offset: int):
    """Yield ``(raw_file_offset, line_bytes)`` for a shard written by :func:`write_shard`."""
    offset = first_offset
    with open(shard_path, "rb", buffering=_BUF) as fh:
        for raw in fh:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            yield offset, line
            offset += len(line) + 1
