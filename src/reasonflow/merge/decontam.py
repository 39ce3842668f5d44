"""N-gram decontamination against evaluation questions (MMLU, GPQA).

Text is normalised to lowercase alphanumeric words; a training prompt is contaminated
when any ``n`` consecutive words of it also occur, consecutively, in an evaluation
question. N-grams are stored as stable 64-bit BLAKE2b digests (the same in every
process, unlike ``hash``), each mapped to the first question it came from.

Questions come from the benchmarks the workflow evaluates (``eval_prep``'s items JSONL,
the exact items asked, after the subject filter) and from extra raw release files
(MMLU CSVs/tarballs, GPQA CSVs). :class:`QuestionIndex` keeps, per source, how many
questions it contributed, so the merge can say what each source was checked against
and how many rows each removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
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


def read_prepared(path: str, label: str) -> Iterator[tuple[str, str]]:
    """``(label:item id, question)`` from a prepared benchmark file (one JSON item per line)."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if not isinstance(item.get("question"), str) or "id" not in item:
                raise ValueError(f"{path}:{lineno}: a prepared benchmark item needs 'id' and a 'question' string")
            yield f"{label}:{item['id']}", item["question"]


class QuestionIndex:
    """N-gram digests of every question, with per-source bookkeeping.

    ``add(source, questions)`` indexes ``(question_id, text)`` pairs; an n-gram seen before keeps
    the question it came from first, so sources added first are credited with shared questions.
    """

    def __init__(self, n: int):
        self.n = n
        self.index: dict[int, str] = {}
        self.questions: dict[str, int] = {}
        self._source: dict[str, str] = {}

    def add(self, source: str, questions: Iterable[tuple[str, str]]) -> "QuestionIndex":
        count = self.questions.setdefault(source, 0)
        for qid, text in questions:
            count += 1
            self._source.setdefault(qid, source)
            for h in ngram_hashes(text, self.n):
                self.index.setdefault(h, qid)
        self.questions[source] = count
        return self

    def source_of(self, question_id: str) -> str:
        return self._source[question_id]

    def __len__(self) -> int:
        return sum(self.questions.values())


def first_match(text: str, index: dict[int, str], n: int) -> str | None:
    """The id of the first evaluation question sharing an n-gram with ``text``, if any."""
    for h in ngram_hashes(text, n):
        if h in index:
            return index[h]
    return None
