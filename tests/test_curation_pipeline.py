"""The curation stage through the real NeMo Curator pipeline (Ray Data executor).

Each selected demo file is curated as one shard; every line's fate (kept, dropped by
which filter, rejected for which reason) must be the one the fixture builder planted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from conftest import SELECTED, curate_whole_file, read_jsonl, settings_for
from reasonflow import chat
from reasonflow.curation.filters import FILTER_ORDER

pytestmark = pytest.mark.slow


def _fates(outs) -> dict[str, str]:
    got = {r["id"]: "kept" for r in read_jsonl(outs["kept"])}
    got |= {r["id"]: r["filter"] for r in read_jsonl(outs["dropped"])}
    got |= {r["id"]: "rejected:" + r["reason"].split(":", 1)[0] for r in read_jsonl(outs["rejects"])}
    return got


@pytest.mark.parametrize("source", SELECTED)
def test_every_row_gets_its_planted_fate(curated, expected_fates, source):
    _, outs = curated[source]
    got = _fates(outs)
    want = {k: v["fate"] for k, v in expected_fates.items() if v["file"] == source}
    wrong = {k: (want[k], got.get(k), expected_fates[k]["case"]) for k in want if got.get(k) != want[k]}
    assert not wrong, f"{len(wrong)} rows with the wrong fate, e.g. {list(wrong.items())[:5]}"
    # every filter and every reject category is exercised by this file or the other one
    assert set(got) == set(want)


def test_each_filter_and_reject_category_is_exercised(curated):
    fates = Counter(f for _, outs in curated.values() for f in _fates(outs).values())
    for name in FILTER_ORDER:
        assert fates[name] > 0, name
    for category in ("blank_line", "invalid_utf8", "bad_json", "not_object", "missing_field", "wrong_type",
                     "bad_messages"):
        assert fates[f"rejected:{category}"] > 0, category


@pytest.mark.parametrize("source", SELECTED)
def test_conservation_law(curated, demo_dir, source):
    stats, outs = curated[source]
    lines = (demo_dir / "raw" / source).read_bytes().count(b"\n")
    assert stats["rows_in"] == lines
    assert stats["rows_in"] == stats["kept"] + sum(stats["dropped"].values()) + stats["rejected"]
    assert list(stats["dropped"]) == list(FILTER_ORDER)
    assert stats["conservation"]["ok"] is True
    assert json.loads(outs["stats"].read_text()) == stats
    assert len(read_jsonl(outs["rejects"])) == stats["rejected"]


def test_rejects_keep_the_raw_line(curated, demo_dir):
    _, outs = curated["SFT/chat/chat.jsonl"]
    raw = (demo_dir / "raw" / "SFT/chat/chat.jsonl").read_bytes()
    for rec in read_jsonl(outs["rejects"]):
        off = int(rec["id"].rsplit("@", 1)[1])
        line = raw[off : raw.index(b"\n", off)]
        if "raw_base64" in rec:
            import base64

            assert base64.b64decode(rec["raw_base64"]) == line
        else:
            assert rec["raw"] == line.decode("utf-8")


def test_kept_rows_are_formatted_with_exact_token_counts(curated, demo_dir):
    tok = chat.load_tokenizer(str(demo_dir / "tokenizer"))
    for source in SELECTED:
        for row in read_jsonl(curated[source][1]["kept"]):
            assert set(row) == {"id", "category", "reasoning", "input", "output", "token_count",
                                "completion_token_count"}
            assert row["input"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
            assert "Cutting Knowledge Date" in row["input"]
            assert row["input"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
            assert row["output"].endswith("<|eot_id|>")
            ids = tok(row["input"] + row["output"], add_special_tokens=False)["input_ids"]
            assert row["token_count"] == len(ids) <= 4096
            assert row["completion_token_count"] == len(tok(row["output"], add_special_tokens=False)["input_ids"])


def test_the_5mb_line_is_dropped_by_length_without_tokenizing(curated):
    _, outs = curated["SFT/math/math_v1.1.jsonl"]
    bound = [r for r in read_jsonl(outs["dropped"]) if "lower bound" in (r["reason"] or "")]
    assert len(bound) >= 1 and all(r["filter"] == "token_limits" for r in bound)


def test_two_runs_are_byte_identical(curated, demo_dir, tmp_path):
    source = "SFT/chat/chat.jsonl"
    _, again = curate_whole_file(demo_dir, tmp_path, source, settings_for(demo_dir), tag="again")
    _, first = curated[source]
    for kind in ("kept", "dropped", "rejects", "stats"):
        assert hashlib.sha256(again[kind].read_bytes()).hexdigest() == hashlib.sha256(
            first[kind].read_bytes()).hexdigest(), kind


def test_reference_modes(curated, demo_dir, tmp_path):
    """boxed_mode=reference never drops; token_count_mode=reference counts BOS twice."""
    source = "SFT/chat/chat.jsonl"
    settings = settings_for(demo_dir, boxed_mode="reference", token_count_mode="reference")
    stats, outs = curate_whole_file(demo_dir, tmp_path, source, settings, tag="ref")
    exact_stats, exact_outs = curated[source]
    assert stats["dropped"]["boxed"] == 0 < exact_stats["dropped"]["boxed"]
    exact = {r["id"]: r for r in read_jsonl(exact_outs["kept"])}
    ref = {r["id"]: r for r in read_jsonl(outs["kept"])}
    assert set(exact) < set(ref)
    for row_id, row in exact.items():
        assert ref[row_id]["token_count"] == row["token_count"] + 1  # the second BOS
        assert ref[row_id]["completion_token_count"] > row["completion_token_count"]  # spurious header
