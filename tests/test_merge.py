"""Curriculum merge: interleave schedules, stratified cap, decontamination, and real dask runs."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import read_jsonl
from reasonflow.merge import decontam
from reasonflow.merge.interleave import schedule, split_cap, stratified_take
from reasonflow.evaluate.prep import prepare
from reasonflow.merge.run import MergeSettings, local_cluster, merge, question_index


# -- schedules (pure) ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_on, n_off", [(0, 0), (5, 0), (0, 4), (7, 3), (3, 7), (1000, 37)])
@pytest.mark.parametrize("mode, block", [("row", 1), ("partition", 4), ("ratio", 1)])
def test_schedules_take_every_row_once(n_on, n_off, mode, block):
    picks = list(schedule(n_on, n_off, mode, block))
    assert picks.count(True) == n_on and picks.count(False) == n_off


def test_row_mode_alternates_then_appends_the_rest():
    assert list(schedule(2, 4, "row")) == [True, False, True, False, False, False]


def test_partition_mode_alternates_blocks_on_first():
    picks = "".join("N" if p else "F" for p in schedule(7, 5, "partition", 3))
    assert picks == "NNNFFFNNNFFN"


@pytest.mark.parametrize("n_on, n_off", [(1000, 37), (37, 1000), (500, 500), (3, 1)])
def test_ratio_mode_keeps_the_proportion_in_every_prefix(n_on, n_off):
    on = 0
    share = n_on / (n_on + n_off)
    for k, take_on in enumerate(schedule(n_on, n_off, "ratio"), start=1):
        on += take_on
        assert abs(on - k * share) <= 1.0, (k, on)


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="'zigzag'"):
        list(schedule(1, 1, "zigzag"))


def test_stratified_take_spreads_evenly_and_cap_keeps_balance():
    idx = stratified_take(100, 10)
    assert idx == sorted(set(idx)) and len(idx) == 10 and idx[0] == 5 and idx[-1] == 95
    assert stratified_take(5, 10) == [0, 1, 2, 3, 4]
    assert split_cap(900, 100, 100) == (90, 10)
    assert split_cap(900, 100, 0) == (900, 100)


# -- decontamination (pure) ------------------------------------------------------------------------

def test_ngram_match_needs_the_full_run():
    q = "Which of the following best explains why the mitochondria of a eukaryotic cell has its own genome"
    index = decontam.QuestionIndex(13).add("q", [("q1", q)]).index
    assert decontam.first_match("Quiz: " + q.upper() + "?", index, 13) == "q1"
    twelve = " ".join(decontam.words(q)[:12])
    assert decontam.first_match(twelve + " banana", index, 13) is None


def test_reads_the_demo_question_files(demo_dir):
    files = [str(demo_dir / "eval/mmlu/data.tar"), str(demo_dir / "eval/gpqa/gpqa_main.csv")]
    qs = list(decontam.read_questions(files))
    assert any(qid.startswith("data.tar/data/test/") for qid, _ in qs)
    assert any(qid.startswith("gpqa_main.csv:rec") for qid, _ in qs)
    assert all(len(decontam.words(text)) >= 13 for _, text in qs)


def test_question_index_credits_each_source_with_its_questions(tmp_path):
    q = "which of the following best explains why the planted question has more than thirteen words in it"
    prepared = tmp_path / "bench.jsonl"
    prepared.write_text(json.dumps({"id": "x1", "question": q}) + "\n" + json.dumps({"id": "x2", "question": "short"})
                        + "\n", encoding="utf-8")
    qi = decontam.QuestionIndex(13).add("bench", decontam.read_prepared(str(prepared), "bench"))
    qi.add("extra", [("extra:1", q), ("extra:2", q.replace("planted", "other"))])
    assert qi.questions == {"bench": 2, "extra": 2} and len(qi) == 4
    hit = decontam.first_match("Quiz: " + q, qi.index, 13)
    assert hit == "bench:x1" and qi.source_of(hit) == "bench"   # the source added first keeps a shared n-gram
    assert qi.source_of(decontam.first_match(q.replace("planted", "other"), qi.index, 13)) == "extra"


def test_prepared_item_without_a_question_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x1", "prompt": "?"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'question'"):
        list(decontam.read_prepared(str(bad), "bad"))


def test_decontaminate_without_any_question_is_an_error_naming_the_keys(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="merge.decontaminate.*evaluate.benchmarks.*merge.question_files"):
        question_index(MergeSettings(), {})
    with pytest.raises(ValueError, match="no question to check against"):
        question_index(MergeSettings(), {"mmlu": str(empty)})
    assert not len(question_index(MergeSettings(decontaminate=False), {}))


# -- the dask merge on the demo's curated rows -------------------------------------------------------

def _merge(curated, demo_dir, tmp, workers=2, **overrides):
    questions = [str(demo_dir / p) for p in
                 ("eval/mmlu/data.tar", "eval/gpqa/gpqa_main.csv", "eval/gpqa/gpqa_diamond.csv")]
    settings = MergeSettings(question_files=questions, **overrides)
    outs = {k: tmp / k for k in ("training.jsonl", "dups.jsonl", "cont.jsonl", "stats.json")}
    with local_cluster(workers):
        stats = merge([str(o["kept"]) for _, o in curated.values()], settings, *map(str, outs.values()),
                      workdir=str(tmp / "work"))
    return stats, outs


@pytest.fixture(scope="module")
def merged(curated, demo_dir, tmp_path_factory):
    return _merge(curated, demo_dir, tmp_path_factory.mktemp("merged"))


@pytest.fixture(scope="module")
def expected(demo_dir):
    return json.loads((demo_dir / "expected_merge.json").read_text())


pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_dedup_and_decontamination_counts_are_exact(merged, expected):
    stats, outs = merged
    dups = read_jsonl(outs["dups.jsonl"])
    assert stats["counts"]["duplicates_dropped"] == expected["duplicates_dropped"] == len(dups)
    groups = {tuple(g) for g in expected["duplicate_groups"]}
    for d in dups:  # each dropped copy points at the first member of its group
        assert any(d["id"] in g and d["duplicate_of"] == g[0] for g in groups)
    cont = read_jsonl(outs["cont.jsonl"])
    assert sorted(c["id"] for c in cont) == expected["contaminated_ids"]
    assert stats["counts"]["contaminated_dropped"] == len(expected["contaminated_ids"])


@pytest.fixture(scope="module")
def prepared(demo_dir, tmp_path_factory):
    """The demo's benchmarks as eval_prep writes them (MMLU: test split, STEM subjects)."""
    out = tmp_path_factory.mktemp("prepared")
    files = {}
    for name, src in (("mmlu", "eval/mmlu/data.tar"), ("gpqa_main", "eval/gpqa/gpqa_main.csv"),
                      ("gpqa_diamond", "eval/gpqa/gpqa_diamond.csv")):
        prepare(name, str(demo_dir / src), out / f"{name}.jsonl", out / f"{name}.json", cache_dir=out / "cache")
        files[name] = str(out / f"{name}.jsonl")
    return files


@pytestmark_slow
def test_prepared_benchmarks_alone_remove_the_rows_quoting_their_items(curated, demo_dir, prepared, tmp_path,
                                                                       expected):
    """Without any question file, the evaluated items still catch every planted row quoting a test-split
    MMLU or GPQA question; the stats and the CSV say how many each benchmark checked and removed."""
    settings = MergeSettings(question_files=[])
    outs = {k: tmp_path / k for k in ("training.jsonl", "dups.jsonl", "cont.jsonl", "stats.json")}
    with local_cluster(1):
        stats = merge([str(o["kept"]) for _, o in curated.values()], settings, *map(str, outs.values()),
                      workdir=str(tmp_path / "work"), benchmarks=prepared,
                      out_decontamination=str(tmp_path / "decontamination.csv"))
    asked = {}
    for name, path in prepared.items():
        asked[name] = {json.loads(line)["question"] for line in open(path, encoding="utf-8")}
    cont = read_jsonl(outs["cont.jsonl"])
    per = stats["counts"]["decontamination"]
    assert set(per) == set(prepared) and all(v["kind"] == "benchmark" for v in per.values())
    for name in prepared:
        assert per[name]["questions"] == len(asked[name]) > 0
        assert per[name]["rows_removed"] == sum(c["question"].startswith(name + ":") for c in cont)
    # every removed row was caught by a benchmark item; the planted test-split rows are among them
    assert {c["id"] for c in cont} <= set(expected["contaminated_ids"])
    assert sum(v["rows_removed"] for v in per.values()) == len(cont) >= 6
    csv_rows = (tmp_path / "decontamination.csv").read_text().splitlines()
    assert csv_rows[0] == "source,kind,questions,rows_removed" and len(csv_rows) == 1 + len(prepared)


@pytestmark_slow
def test_training_rows_are_sorted_per_bucket_and_complete(merged, expected):
    stats, outs = merged
    rows = read_jsonl(outs["training.jsonl"])
    assert set(rows[0]) >= {"input", "output", "token_count", "completion_token_count"}
    for bucket in ("on", "off"):
        keys = [(r["completion_token_count"], r["id"].rsplit("@")[0], int(r["id"].rsplit("@")[1]))
                for r in rows if r["reasoning"] == bucket]
        assert keys == sorted(keys), bucket
    removed = expected["duplicates_dropped"] + len(expected["contaminated_ids"])
    kept = expected["kept_by_reasoning"]
    assert len(rows) == kept["on"] + kept["off"] - removed == stats["counts"]["training_rows"]["total"]


@pytestmark_slow
def test_one_or_two_workers_give_identical_bytes(merged, curated, demo_dir, tmp_path):
    _, one = _merge(curated, demo_dir, tmp_path, workers=1)
    _, two = merged
    for name in ("training.jsonl", "dups.jsonl", "cont.jsonl"):
        assert one[name].read_bytes() == two[name].read_bytes(), name


@pytestmark_slow
@pytest.mark.parametrize("mode", ["row", "partition"])
def test_interleave_modes_on_the_fixture(mode, curated, demo_dir, tmp_path):
    _, outs = _merge(curated, demo_dir, tmp_path, interleave=mode, partition_rows=50)
    seq = "".join("N" if r["reasoning"] == "on" else "F" for r in read_jsonl(outs["training.jsonl"]))
    n_on, n_off = seq.count("N"), seq.count("F")
    block = 1 if mode == "row" else 50
    expected = "".join("N" if p else "F" for p in schedule(n_on, n_off, "partition", block))
    assert seq == expected
    assert seq.startswith("N" * block + "F" * block)


@pytestmark_slow
def test_ratio_mode_and_max_samples_cap(curated, demo_dir, tmp_path):
    stats, outs = _merge(curated, demo_dir, tmp_path, interleave="ratio", max_samples=600)
    rows = read_jsonl(outs["training.jsonl"])
    assert len(rows) == 600
    after = stats["counts"]["after_dedup_decontam"]
    share = after["on"] / (after["on"] + after["off"])
    on = Counter(r["reasoning"] for r in rows)["on"]
    assert on == round(600 * share)
    running = 0
    for k, r in enumerate(rows, start=1):
        running += r["reasoning"] == "on"
        assert abs(running - k * on / 600) <= 1.0
