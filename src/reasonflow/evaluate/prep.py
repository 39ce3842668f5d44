"""Benchmark preparation: raw release files -> one sorted JSONL of items per benchmark.

Every item is ``{"id", "benchmark", "subject", "question", "choices": [A, B, C, D], "answer"}``
(``answer`` one of ``"A".."D"``), written sorted by ``id`` with ``json.dumps(sort_keys=True,
ensure_ascii=False)`` so a file depends only on its source bytes and settings: byte-identical
across runs, machines and whichever other benchmarks are prepared in the same run. A JSON
sidecar records the item file's sha256, the source's sha256 and the settings.

* MMLU: the original Berkeley ``data.tar`` (members ``data/<split>/<subject>_<split>.csv``,
  headerless rows ``question,A,B,C,D,answer``), or the unpacked ``data/`` folder. ``fetch``
  brings a URL (``http(s)://``, ``file://``) or local path into place and checks its sha256.
  Subjects: ``stem`` (the 26 subjects whose MMLU subcategory is math, health, physics, biology,
  chemistry, computer science or engineering -- the reference's selection), ``all`` (57) or an
  explicit list. Selected subjects absent from the source are skipped with a logged note.
* GPQA main / diamond: the release CSVs (``gpqa_main.csv``, ``gpqa_diamond.csv``) from a local
  path or from the gated hub dataset ``Idavidrein/gpqa`` (``hf://Idavidrein/gpqa[@revision]``,
  token from ``HF_TOKEN``). The four options are shuffled per question with a permutation
  derived from ``sha256(f"{seed}:{record_id}")`` -- reproducible and independent of the other
  rows (the reference shares one RNG across datasets instead).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LETTERS = "ABCD"

# MMLU subject -> subcategory, verbatim from hendrycks/test categories.py
# (https://github.com/hendrycks/test/blob/4450500f923c49f1fb1dd3d99108a0bd9717b660/categories.py).
MMLU_SUBCATEGORIES: dict[str, str] = {
    "abstract_algebra": "math",
    "anatomy": "health",
    "astronomy": "physics",
    "business_ethics": "business",
    "clinical_knowledge": "health",
    "college_biology": "biology",
    "college_chemistry": "chemistry",
    "college_computer_science": "computer science",
    "college_mathematics": "math",
    "college_medicine": "health",
    "college_physics": "physics",
    "computer_security": "computer science",
    "conceptual_physics": "physics",
    "econometrics": "economics",
    "electrical_engineering": "engineering",
    "elementary_mathematics": "math",
    "formal_logic": "philosophy",
    "global_facts": "other",
    "high_school_biology": "biology",
    "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science",
    "high_school_european_history": "history",
    "high_school_geography": "geography",
    "high_school_government_and_politics": "politics",
    "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math",
    "high_school_microeconomics": "economics",
    "high_school_physics": "physics",
    "high_school_psychology": "psychology",
    "high_school_statistics": "math",
    "high_school_us_history": "history",
    "high_school_world_history": "history",
    "human_aging": "health",
    "human_sexuality": "culture",
    "international_law": "law",
    "jurisprudence": "law",
    "logical_fallacies": "philosophy",
    "machine_learning": "computer science",
    "management": "business",
    "marketing": "business",
    "medical_genetics": "health",
    "miscellaneous": "other",
    "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy",
    "nutrition": "health",
    "philosophy": "philosophy",
    "prehistory": "history",
    "professional_accounting": "other",
    "professional_law": "law",
    "professional_medicine": "health",
    "professional_psychology": "psychology",
    "public_relations": "politics",
    "security_studies": "politics",
    "sociology": "culture",
    "us_foreign_policy": "politics",
    "virology": "health",
    "world_religions": "philosophy",
}
STEM_SUBCATEGORIES = ("math", "health", "physics", "biology", "chemistry", "computer science", "engineering")
MMLU_ALL = tuple(sorted(MMLU_SUBCATEGORIES))
MMLU_STEM = tuple(s for s in MMLU_ALL if MMLU_SUBCATEGORIES[s] in STEM_SUBCATEGORIES)
assert len(MMLU_ALL) == 57 and len(MMLU_STEM) == 26

GPQA_HUB_REPO = "Idavidrein/gpqa"
GPQA_FILES = {"gpqa_main": "gpqa_main.csv", "gpqa_diamond": "gpqa_diamond.csv"}
DEFAULT_SEED = 42

# All 24 orderings of the four options; a question's permutation is picked by its hash.
_PERMUTATIONS = tuple(itertools.permutations(range(4)))


class ChecksumError(ValueError):
    """A fetched file's sha256 differs from the expected one."""


# -- files ----------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check(url: str, expected: str | None, got: str) -> None:
    if expected and expected.lower() != got:
        raise ChecksumError(f"sha256 mismatch for {url}: expected {expected.lower()}, got {got}")


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https", "file")


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    sleep=time.sleep,
) -> str:
    """Put ``url`` (``http(s)://``, ``file://`` or a local path) at ``dest``; return its sha256.

    HTTP downloads are streamed to ``dest + ".part"`` and retried with exponential backoff
    (``backoff * 2**attempt`` s) on connection errors, timeouts and 5xx answers. The file is moved
    into place only when its sha256 matches ``sha256`` (when given); a mismatch raises
    :class:`ChecksumError` naming the URL, the expected and the actual digest. An existing
    ``dest`` whose digest already matches the expected one is kept as is.
    """
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if sha256 and dest.is_file() and sha256_file(dest) == sha256.lower():
        log.info("fetch: %s already present with the expected sha256", dest)
        return sha256.lower()
    part = dest.with_name(dest.name + ".part")
    parsed = urllib.parse.urlparse(str(url))
    try:
        if parsed.scheme in ("http", "https"):
            for attempt in range(retries + 1):
                try:
                    with requests.get(url, stream=True, timeout=timeout) as resp:
                        if resp.status_code >= 500:
                            raise requests.HTTPError(f"HTTP {resp.status_code}", response=resp)
                        resp.raise_for_status()  # 4xx: not retried
                        with open(part, "wb") as fh:
                            for block in resp.iter_content(1 << 20):
                                fh.write(block)
                    break
                except (requests.ConnectionError, requests.Timeout, requests.HTTPError) as exc:
                    status = getattr(getattr(exc, "response", None), "status_code", None)
                    if (status is not None and status < 500) or attempt == retries:
                        raise
                    wait = backoff * 2**attempt
                    log.warning("fetch %s: %s; retry %d/%d in %.0f s", url, exc, attempt + 1, retries, wait)
                    sleep(wait)
        else:
            src = urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else str(url)
            shutil.copyfile(src, part)
        got = sha256_file(part)
        _check(str(url), sha256, got)
        os.replace(part, dest)
        return got
    finally:
        part.unlink(missing_ok=True)


def resolve_source(source: str, cache_dir: str | os.PathLike, sha256: str | None = None) -> tuple[Path, str]:
    """A local path for ``source`` (URLs are fetched into ``cache_dir``) and its verified sha256."""
    if is_url(source):
        name = Path(urllib.parse.urlparse(source).path).name or "download"
        dest = Path(cache_dir) / name
        return dest, fetch(source, dest, sha256)
    path = Path(source)
    got = _tree_sha256(path) if path.is_dir() else sha256_file(path)
    _check(str(source), sha256, got)
    return path, got


def _tree_sha256(root: Path) -> str:
    """Digest of a folder: relative paths and contents of its files, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


# -- MMLU -----------------------------------------------------------------------------------------


def mmlu_subjects(selection: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(selection, str):
        if selection == "stem":
            return MMLU_STEM
        if selection == "all":
            return MMLU_ALL
        selection = [s.strip() for s in selection.split(",") if s.strip()]
    unknown = sorted(set(selection) - set(MMLU_ALL))
    if unknown:
        raise ValueError(f"unknown MMLU subjects {unknown}; use 'stem', 'all' or names from {MMLU_ALL}")
    return tuple(sorted(set(selection)))


def _mmlu_csv_files(source: Path, split: str) -> dict[str, str]:
    """``subject -> CSV text`` of one split from a ``data.tar`` or an unpacked ``data/`` folder."""
    suffix = f"_{split}.csv"
    out: dict[str, str] = {}
    if source.is_dir():
        base = source / "data" if (source / "data" / split).is_dir() else source
        for p in sorted((base / split).glob(f"*{suffix}")):
            out[p.name[: -len(suffix)]] = p.read_text(encoding="utf-8")
        return out
    with tarfile.open(source) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 2 and parts[-2] == split and parts[-1].endswith(suffix):
                out[parts[-1][: -len(suffix)]] = tar.extractfile(member).read().decode("utf-8")
    return out


def mmlu_items(
    source: str | os.PathLike, subjects: str | Sequence[str] = "stem", split: str = "test"
) -> tuple[list[dict], dict]:
    """Items of the selected subjects of one MMLU split, and a note of what was found/skipped."""
    wanted = mmlu_subjects(subjects)
    files = _mmlu_csv_files(Path(source), split)
    missing = [s for s in wanted if s not in files]
    if missing:
        log.warning(
            "MMLU: %d of %d selected subjects are not in %s (%s split), skipped: %s",
            len(missing), len(wanted), source, split, ", ".join(missing),
        )
    if not any(s in files for s in wanted):
        raise ValueError(f"MMLU: none of the selected subjects found in {str(source)!r} ({split} split)")
    items = []
    for subject in wanted:
        if subject not in files:
            continue
        rows = [r for r in csv.reader(io.StringIO(files[subject])) if r]
        for i, row in enumerate(rows):
            if len(row) != 6 or row[5].strip().upper() not in LETTERS:
                raise ValueError(f"MMLU {subject}_{split}.csv row {i}: expected question,A,B,C,D,answer; got {row!r}")
            items.append(
                {
                    "id": f"mmlu/{subject}/{i:05d}",
                    "benchmark": "mmlu",
                    "subject": subject,
                    "question": row[0],
                    "choices": row[1:5],
                    "answer": row[5].strip().upper(),
                }
            )
    note = {
        "split": split,
        "subjects_selected": list(wanted),
        "subjects_used": [s for s in wanted if s in files],
        "subjects_missing": missing,
    }
    return sorted(items, key=lambda it: it["id"]), note


# -- GPQA -----------------------------------------------------------------------------------------


def gpqa_permutation(record_id: str, seed: int = DEFAULT_SEED) -> tuple[int, ...]:
    """Order of ``[correct, incorrect 1, incorrect 2, incorrect 3]`` shown as A..D for one question."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return _PERMUTATIONS[int.from_bytes(digest[:8], "big") % len(_PERMUTATIONS)]


def gpqa_hub_csv(benchmark: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """Download ``gpqa_main.csv`` / ``gpqa_diamond.csv`` from the gated hub dataset (needs ``HF_TOKEN``)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
        repo_id=GPQA_HUB_REPO,
        filename=GPQA_FILES[benchmark],
        repo_type="dataset",
        revision=revision,
        cache_dir=cache_dir,
        token=os.environ.get("HF_TOKEN"),
    )


def gpqa_items(source: str | os.PathLike, benchmark: str, seed: int = DEFAULT_SEED) -> tuple[list[dict], dict]:
    """Items of a GPQA release CSV with per-question shuffled options."""
    if benchmark not in GPQA_FILES:
        raise ValueError(f"unknown GPQA benchmark {benchmark!r}; expected one of {sorted(GPQA_FILES)}")
    with open(source, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3", "Record ID"]
    if rows and (absent := [c for c in need if c not in rows[0]]):
        raise ValueError(f"{str(source)!r} is not a GPQA release CSV: missing columns {absent}")
    items, skipped, seen = [], [], set()
    for row in rows:
        rid = (row["Record ID"] or "").strip()
        texts = [(row[c] or "").strip() for c in need[:5]]
        if not rid or not all(texts):
            skipped.append(rid or "?")
            continue
        if rid in seen:
            raise ValueError(f"{str(source)!r}: duplicate Record ID {rid!r}")
        seen.add(rid)
        perm = gpqa_permutation(rid, seed)
        options = texts[1:]  # correct first
        domain = (row.get("High-level domain") or "").strip()
        sub = (row.get("Subdomain") or "").strip()
        items.append(
            {
                "id": f"{benchmark}/{rid}",
                "benchmark": benchmark,
                "subject": f"{domain}/{sub}" if sub else domain,
                "question": texts[0],
                "choices": [options[i] for i in perm],
                "answer": LETTERS[perm.index(0)],
            }
        )
    if skipped:
        log.warning("%s: skipped %d rows with an empty question/option/Record ID: %s", benchmark, len(skipped), skipped)
    return sorted(items, key=lambda it: it["id"]), {"seed": seed, "rows": len(rows), "skipped": skipped}


# -- outputs --------------------------------------------------------------------------------------


def dumps_items(items: Iterable[dict]) -> bytes:
    return "".join(json.dumps(it, sort_keys=True, ensure_ascii=False) + "\n" for it in items).encode("utf-8")


def write_items(items: list[dict], out_jsonl: str | os.PathLike, out_meta: str | os.PathLike, meta: dict) -> dict:
    """Write the item JSONL and its sidecar (sha256 of the JSONL + ``meta``); return the sidecar."""
    data = dumps_items(sorted(items, key=lambda it: it["id"]))
    digest = hashlib.sha256(data).hexdigest()
    Path(out_jsonl).parent.mkdir(parents=True, exist_ok=True)
    Path(out_jsonl).write_bytes(data)
    counts: dict[str, int] = {}
    for it in items:
        counts[it["subject"]] = counts.get(it["subject"], 0) + 1
    side = {"sha256": digest, "n": len(items), "answer_letters": _letter_counts(items), "subjects": counts, **meta}
    Path(out_meta).parent.mkdir(parents=True, exist_ok=True)
    Path(out_meta).write_text(json.dumps(side, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return side


def _letter_counts(items: list[dict]) -> dict[str, int]:
    return {L: sum(it["answer"] == L for it in items) for L in LETTERS}


def read_items(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def prepare(
    benchmark: str,
    source: str,
    out_jsonl: str | os.PathLike,
    out_meta: str | os.PathLike,
    *,
    sha256: str | None = None,
    subjects: str | Sequence[str] = "stem",
    split: str = "test",
    seed: int = DEFAULT_SEED,
    cache_dir: str | os.PathLike = "resources/eval/downloads",
) -> dict:
    """Prepare one benchmark (``mmlu``, ``gpqa_main`` or ``gpqa_diamond``) from ``source``.

    ``source``: MMLU -- ``data.tar`` URL/path or the unpacked ``data/`` folder; GPQA -- the release
    CSV path/URL, or ``hf://Idavidrein/gpqa[@revision]`` for the gated hub dataset.
    ``sha256`` (optional) is checked against the source. Returns the sidecar dict.
    """
    source = str(source)
    if source.startswith("hf://"):
        if benchmark not in GPQA_FILES:
            raise ValueError(f"hf:// sources are only for GPQA, not {benchmark!r}")
        repo, _, revision = source.removeprefix("hf://").partition("@")
        if repo != GPQA_HUB_REPO:
            raise ValueError(f"GPQA hub source must be hf://{GPQA_HUB_REPO}[@revision], got {source!r}")
        path = Path(gpqa_hub_csv(benchmark, revision or None, cache_dir=str(Path(cache_dir) / "hf")))
        src_sha = sha256_file(path)
        _check(source, sha256, src_sha)
    else:
        path, src_sha = resolve_source(source, cache_dir, sha256)
    src_meta = {"name": path.name, "sha256": src_sha}
    if benchmark == "mmlu":
        items, note = mmlu_items(path, subjects, split)
    elif benchmark in GPQA_FILES:
        items, note = gpqa_items(path, benchmark, seed)
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected mmlu, gpqa_main or gpqa_diamond")
    meta = {"benchmark": benchmark, "source": src_meta, **note}
    side = write_items(items, out_jsonl, out_meta, meta)
    log.info("%s: %d items, sha256 %s", benchmark, side["n"], side["sha256"])
    return side
