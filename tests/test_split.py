"""Byte-range sharding: every line lands in exactly one shard, streamed, offsets exact."""

import random

import pytest

from reasonflow.split import ShardInfo, iter_lines_with_offsets, shard_count, write_shard


def _raw(tmp_path, lines, trailing_newline=True):
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    path = tmp_path / "raw.jsonl"
    path.write_bytes(data)
    return path, data


def _offsets(data):
    offs, pos = [], 0
    for line in data.split(b"\n")[: data.count(b"\n") + (0 if data.endswith(b"\n") else 1)]:
        offs.append((pos, line))
        pos += len(line) + 1
    return offs


@pytest.mark.parametrize("shard_bytes", [1, 7, 64, 1000, 10**6])
@pytest.mark.parametrize("trailing", [True, False])
def test_every_line_in_exactly_one_shard(tmp_path, shard_bytes, trailing):
    rng = random.Random(shard_bytes)
    lines = [bytes(rng.choice(b"abc\xff{}") for _ in range(rng.randint(0, 90))) for _ in range(200)]
    lines[50] = b"x" * 5000  # a line much longer than most shards
    path, data = _raw(tmp_path, lines, trailing)
    n = shard_count(len(data), shard_bytes)
    got = []
    for i in range(n):
        info = write_shard(path, "raw.jsonl", i, shard_bytes, tmp_path / f"{i}.jsonl", tmp_path / f"{i}.json")
        assert ShardInfo.read(tmp_path / f"{i}.json") == info
        shard_lines = list(iter_lines_with_offsets(tmp_path / f"{i}.jsonl", info.first_offset))
        assert len(shard_lines) == info.lines
        assert all(i * shard_bytes <= off < (i + 1) * shard_bytes for off, _ in shard_lines)
        got.extend(shard_lines)
    assert got == _offsets(data)


def test_empty_file_has_one_empty_shard(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert shard_count(0, 100) == 1
    info = write_shard(path, "empty.jsonl", 0, 100, tmp_path / "s.jsonl", tmp_path / "s.json")
    assert info.lines == 0 and (tmp_path / "s.jsonl").read_bytes() == b""


def test_bad_shard_index_and_size_are_named(tmp_path):
    path, _ = _raw(tmp_path, [b"a", b"b"])
    with pytest.raises(ValueError, match="shard index 5 out of range"):
        write_shard(path, "raw.jsonl", 5, 100, tmp_path / "s", tmp_path / "s.json")
    with pytest.raises(ValueError, match="shard_bytes must be positive, got 0"):
        shard_count(10, 0)
