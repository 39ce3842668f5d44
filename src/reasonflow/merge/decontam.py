"""N-gram decontamination against evaluation questions (MMLU, GPQA).

Text is normalised to lowercase alphanumeric words; a training prompt is contaminated
when any ``n`` consecutive words of it also occur, consecutively, in an evaluation
question. N-grams are stored as stable 64-bit BLAKE2b digests (the same in every
process, unlike ``hash``), each mapped to the first question it came from.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_hashes(text: str, n: int) -> Iterator[int]:
    w = words(text)
    for i in range(len(w) - n + 1):
        digest = hashlib.blake2b(" ".join(w[i : i + n]).encode(), digest_size=8).digest()
        yield int.from_bytes(digest, "little")


def _csv_questions(name: str, text: str) -> Iterator[tuple[str, str]]:
    rows = list(csv.reader(io.StringIO(text)))
    if rows and "Question" in rows[0]:  # GPQA release format (header row)
        q, rid = rows[0].index("Question"), rows[0].index("Record ID") if "Record ID" in rows[0] else None
        for i, row in enumerate(rows[1:]):
            yield f"{name}:{row[rid] if rid is not None else i}", row[q]
    else:  # MMLU format: question, A, B, C, D, answer (no header)
        for i, row in enumerate(rows):
            if row:
                yield f"{name}:{i}", row[0]


def read_questions(paths: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(question_id, text)`` from MMLU CSVs/tarballs/folders and GPQA CSVs."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from read_questions(sorted(str(p) for p in path.rglob("*.csv")))
        elif path.suffix == ".tar":
            with tarfile.open(path) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    if member.isfile() and member.name.endswith(".csv"):
                        text = tar.extractfile(member).read().decode("utf-8")
                        yield from _csv_questions(f"{path.name}/{member.name}", text)
        elif path.suffix == ".csv":
            yield from _csv_questions(path.name, path.read_text(encoding="utf-8"))
        else:
            raise ValueError(f"decontamination file {str(path)!r}: expected .csv, .tar or a folder")


def build_index_from_texts(questions: Iterable[tuple[str, str]], n: int) -> dict[int, str]:
    """n-gram digest -> id of the first question containing it."""
    index: dict[int, str] = {}
    for qid, text in questions:
        for h in ngram_hashes(text, n):
            index.setdefault(h, qid)
    return index


def build_index(paths: Iterable[str], n: int) -> dict[int, str]:
    return build_index_from_texts(read_questions(paths), n)


def first_match(text: str, index: dict[int, str], n: int) -> str | None:
    """The id of the first evaluation question sharing an n-gram with ``text``, if any."""
    for h in ngram_hashes(text, n):
        if h in index:
            return index[h]
    return None
