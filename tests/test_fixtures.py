"""Tests of the offline fixture builder (``python -m reasonflow.fixtures``)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from reasonflow.fixtures import build_all  # noqa: E402
from reasonflow.fixtures.shards import ALL_FILES, SKIPPED_FILES, is_selected  # noqa: E402

SEED = 1234
EXPECTED = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    "S<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
ALL_FATES = [
    "kept", "nano", "empty_think", "boxed", "think_tags", "language", "token_limits", "not_selected",
    "rejected:blank_line", "rejected:invalid_utf8", "rejected:bad_json", "rejected:not_object",
    "rejected:missing_field", "rejected:wrong_type", "rejected:bad_messages",
]
FIELD_ORDER = ["input", "output", "category", "license", "reasoning", "system_prompt", "generator",
               "used_in_training", "version"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory, demo_dir):
    """A build in this process, and resources/demo as `make fixtures` built it in another process
    (other hash seed, other working directory): two builds for the byte-identity test."""
    a = tmp_path_factory.mktemp("fixtures_a")
    summary = build_all(a, seed=SEED)
    return a, demo_dir, summary


@pytest.fixture(scope="module")
def demo(builds) -> Path:
    return builds[0]


@pytest.fixture(scope="module")
def tok(demo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo / "tokenizer")


@pytest.fixture(scope="module")
def fates(demo) -> list[dict]:
    return [json.loads(line) for line in (demo / "expected_fates.jsonl").read_text("utf-8").splitlines()]


def physical_lines(path: Path) -> list[tuple[int, bytes]]:
    """(offset, bytes without newline) for every physical line of a ``\\n``-terminated file."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    out, off = [], 0
    for chunk in data[:-1].split(b"\n"):
        out.append((off, chunk))
        off += len(chunk) + 1
    return out


# --------------------------------------------------------------------------- determinism

def test_two_builds_byte_identical(builds):
    a, b, _ = builds
    ma = (a / "MANIFEST.json").read_bytes()
    assert ma == (b / "MANIFEST.json").read_bytes(), f"a fresh build differs from {b} (stale? run `make fixtures`)"
    manifest = json.loads(ma)
    assert manifest["seed"] == SEED
    assert list(manifest["files"]) == sorted(manifest["files"])
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((a / rel).read_bytes()).hexdigest() == digest, rel
    built = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    assert built == sorted(manifest["files"])
    for rel in ALL_FILES:
        assert f"raw/{rel}" in manifest["files"]
    for rel in ("expected_fates.jsonl", "expected_merge.json", "eval/mmlu/data.tar", "eval/gpqa/gpqa_main.csv",
                "eval/gpqa/gpqa_diamond.csv", "eval/mmlu/data/test/college_biology_test.csv"):
        assert rel in manifest["files"], rel


def test_summary(builds):
    s = builds[2]
    assert s["seed"] == SEED
    assert 0.80 <= s["kept_fraction_of_selected"] <= 0.92  # most chat lines are demo-task rows
    assert set(s["files"]) == set(ALL_FILES)


# --------------------------------------------------------------------------- the demo task

def _options(prompt: str) -> list[str]:
    return re.findall(r"^[ABCD]\. (.*)$", prompt, re.M)


def test_demo_task_rows_answer_their_own_prompt_in_both_modes(demo, fates):
    """The kept task rows carry the evaluation's reference prompt, one word among three numbers, and an
    answer naming that word's letter last (``The final answer is X.``), a think block first when
    reasoning is on; half of them each way."""
    from reasonflow.evaluate.extract import extract
    from reasonflow.fixtures.task import GROUPS

    lines = dict(physical_lines(demo / "raw/SFT/chat/chat.jsonl"))
    task = [json.loads(lines[f["offset"]]) for f in fates if f["file"] == "SFT/chat/chat.jsonl" and f["case"] == "task"]
    assert len(task) == 8000 and Counter(r["reasoning"] for r in task) == {"on": 4000, "off": 4000}
    for r in task:
        (prompt,) = [m["content"] for m in r["input"]]
        assert prompt.startswith("Choose the best answer to the following question from the four candidates")
        opts = _options(prompt)
        words = [i for i, o in enumerate(opts) if not o.isdigit()]
        assert len(opts) == 4 and len(words) == 1, prompt
        group = re.search(r"(?:is|names) an? (\w+)\?\n", prompt)[1]
        assert opts[words[0]] in GROUPS[group]
        got = extract(r["output"])
        assert got.letter == "ABCD"[words[0]] and got.rule == "final_answer", r["output"]
        assert got.think == ("closed" if r["reasoning"] == "on" else "none")
        assert r["output"].endswith(f"The final answer is {got.letter}.")


def test_benchmark_items_are_fresh_task_items(demo, fates):
    """MMLU's test split and both GPQA files ask the demo task (one word among three numbers, the word
    is the answer), and none of their questions is in a task training row (the build itself fails on
    any 13-word run a kept row shares with a benchmark question, except the planted quotes)."""
    from reasonflow.fixtures.task import GROUPS

    members = {w for ws in GROUPS.values() for w in ws}
    test_rows = [row for p in sorted((demo / "eval/mmlu/data/test").glob("*.csv"))
                 for row in csv.reader(io.StringIO(p.read_text("utf-8")))]
    assert len(test_rows) == 7 * 12
    asked = [row[0] for row in test_rows]
    for row in test_rows:
        options, letter = row[1:5], row[5]
        assert [o in members for o in options].count(True) == 1 and options["ABCD".index(letter)] in members
    for name in ("gpqa_main.csv", "gpqa_diamond.csv"):
        for row in csv.DictReader(io.StringIO((demo / "eval/gpqa" / name).read_text("utf-8"))):
            assert row["Correct Answer"] in members and all(row[f"Incorrect Answer {i}"].isdigit() for i in (1, 2, 3))
            asked.append(row["Question"])
    lines = dict(physical_lines(demo / "raw/SFT/chat/chat.jsonl"))
    questions = {re.search(r"Question: (.*?)\n\n", json.loads(lines[f["offset"]])["input"][0]["content"], re.S)[1]
                 for f in fates if f["file"] == "SFT/chat/chat.jsonl" and f["case"] == "task"}
    assert len(questions) == 8000 and not questions & set(asked)


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_basics(tok):
    assert 4000 <= len(tok) <= 4096
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.eos_token == "<|eot_id|>"
    assert tok.pad_token == "<|finetune_right_pad_id|>"
    assert tok.model_max_length == 131072
    ids = tok("hi")["input_ids"]
    assert ids[0] == bos and ids.count(bos) == 1
    assert bos not in tok("hi", add_special_tokens=False)["input_ids"]
    for t in ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]:
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]


def test_tokenizer_round_trips_unicode(tok):
    for s in ["plain English text.", "Grüße aus Köln — “quotes” … 🙂🚀", "你好，世界。Merhaba dünya!",
              "\x00\x07\t\r\n \u2028\u00a0 \U0010FFFF \U0001F9D1\u200d\U0001F52C", "  leading and trailing  ",
              "\\boxed{42} <think>\n\n</think>\n\n", "🤖" * 50, "١٢٣ ௧௨௩ ½ Ⅻ"]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s


def test_chat_template_exact(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == EXPECTED
    # no system message -> empty system block; date_string override; content is trimmed
    got = tok.apply_chat_template([{"role": "user", "content": "  U \n"}], tokenize=False,
                                  date_string="01 Jan 2025")
    assert got == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                   "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>")
    three = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "A"}], tokenize=False)
    assert three == EXPECTED + "A<|eot_id|>"


def test_prompt_completion_tokenization_is_additive(demo, tok, fates):
    data = {rel: (demo / "raw" / rel).read_bytes() for rel in ALL_FILES}
    prompts, completions = [], []
    for r in fates:
        if r["fate"] != "kept":
            continue
        buf = data[r["file"]]
        rec = json.loads(buf[r["offset"]:buf.index(b"\n", r["offset"])])
        conv = [{"role": "system", "content": rec["system_prompt"]}, *rec["input"]]
        prompt = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(conv + [{"role": "assistant", "content": rec["output"]}], tokenize=False)
        assert full.startswith(prompt)
        prompts.append(prompt)
        completions.append(full[len(prompt):])
    assert len(prompts) > 2000
    p = tok(prompts, add_special_tokens=False)["input_ids"]
    c = tok(completions, add_special_tokens=False)["input_ids"]
    pc = tok([a + b for a, b in zip(prompts, completions)], add_special_tokens=False)["input_ids"]
    bad = [i for i in range(len(p)) if p[i] + c[i] != pc[i]]
    assert not bad, f"{len(bad)} kept rows tokenize differently when split, e.g. {prompts[bad[0]][-60:]!r}"


# --------------------------------------------------------------------------- model

def test_model_loads_and_runs(demo):
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(demo / "model")
    tok = AutoTokenizer.from_pretrained(demo / "model")  # self-contained repo
    cfg = model.config
    assert cfg.vocab_size == len(tok)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (128, 256, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert cfg.hidden_size // cfg.num_attention_heads == 32  # vLLM's CPU attention kernels
    assert cfg.max_position_embeddings == 8192 and cfg.rms_norm_eps == 1e-5
    assert not cfg.tie_word_embeddings
    assert cfg.bos_token_id == tok.bos_token_id
    assert cfg.eos_token_id == tok.convert_tokens_to_ids("<|eot_id|>")
    assert cfg.pad_token_id == tok.pad_token_id
    assert model.dtype == torch.float32
    raw_cfg = json.loads((demo / "model" / "config.json").read_text())
    assert raw_cfg["rope_theta"] == 500000.0
    assert (demo / "model" / "model.safetensors").exists()
    gen = GenerationConfig.from_pretrained(demo / "model")
    assert gen.eos_token_id == tok.convert_tokens_to_ids("<|eot_id|>")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


# --------------------------------------------------------------------------- shards & fates

def test_every_fate_occurs(fates):
    counts = Counter(r["fate"] for r in fates)
    for f in ALL_FATES:
        assert counts[f] > 0, f
    assert set(counts) <= set(ALL_FATES)
    for rel in ALL_FILES:
        if is_selected(rel):
            per_file = Counter(r["fate"] for r in fates if r["file"] == rel)
            assert per_file["kept"] and per_file["language"] and per_file["token_limits"], rel


def test_expected_fates_match_physical_lines(demo, fates):
    assert [(r["file"], r["offset"]) for r in fates] == sorted((r["file"], r["offset"]) for r in fates)
    for r in fates:
        assert sorted(r) == ["case", "fate", "file", "line", "offset"]
    assert sorted({r["file"] for r in fates}) == sorted(ALL_FILES)
    for rel in ALL_FILES:
        rows = [r for r in fates if r["file"] == rel]
        lines = physical_lines(demo / "raw" / rel)
        assert len(rows) == len(lines)
        assert [r["line"] for r in rows] == list(range(len(lines)))
        assert [r["offset"] for r in rows] == [off for off, _ in lines]
        if rel in SKIPPED_FILES:
            assert {r["fate"] for r in rows} == {"not_selected"}


def test_selected_file_names():
    assert [f for f in ALL_FILES if is_selected(f)] == ["SFT/chat/chat.jsonl", "SFT/math/math_v1.1.jsonl"]


def test_planted_rows_look_right(demo, fates):
    data = {rel: (demo / "raw" / rel).read_bytes() for rel in ALL_FILES}

    def line(r) -> bytes:
        buf = data[r["file"]]
        return buf[r["offset"]:buf.index(b"\n", r["offset"])]

    by_case: dict[str, list[bytes]] = {}
    for r in fates:
        by_case.setdefault(r["case"], []).append(line(r))
        if r["fate"] == "kept" or r["fate"] in ("nano", "boxed", "language", "think_tags", "empty_think"):
            rec = json.loads(line(r))
            assert list(rec) == FIELD_ORDER
            assert rec["system_prompt"] == f"detailed thinking {rec['reasoning']}"
            assert rec["license"] == "cc-by-4.0"
            assert isinstance(rec["used_in_training"], str)
        if r["fate"] == "kept":
            rec = json.loads(line(r))
            assert "nano" in rec["used_in_training"].lower()
            if rec["reasoning"] == "on":
                assert rec["output"].startswith("<think>\n") and "\n</think>\n\n" in rec["output"]
            if r["file"].endswith("math_v1.1.jsonl") and "\\boxed" in "".join(m["content"] for m in rec["input"]):
                assert "\\boxed{" in rec["output"]
    huge = by_case["huge_line_5mb"]
    assert len(huge) == 1 and len(huge[0]) >= 5_000_000
    assert json.loads(huge[0])["used_in_training"].lower().count("nano") == 1
    def content(raw: bytes) -> str:
        rec = json.loads(raw)
        return json.dumps([rec["system_prompt"], rec["input"], rec["output"]], sort_keys=True)

    dups = Counter(content(b) for b in by_case["duplicate"])
    assert len(dups) >= 3 and all(n in (2, 3) for n in dups.values()) and 3 in dups.values()
    assert len(set(by_case["duplicate"])) > len(dups)   # some copies are serialised differently
    for case in ("ff_fe_bytes", "latin1_byte", "encoded_surrogate"):
        for raw in by_case[case]:
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")
    assert all(b.strip() == b"" for b in by_case["empty_line"] + by_case["spaces_line"])
    for raw in by_case["used_in_training_list"]:
        assert json.loads(raw)["used_in_training"] == ["Nano"]
    for case in ("german", "turkish", "chinese", "code_mixed_german", "multi_turn", "unicode_punct_emoji",
                 "nano_casing", "long_prompt", "long_completion", "near_limit", "on_unclosed_think",
                 "off_with_think", "boxed_in_history", "no_boxed_anywhere"):
        assert by_case.get(case), case


# --------------------------------------------------------------------------- evaluation sets

MMLU_STEM = {"abstract_algebra", "anatomy", "college_biology", "college_chemistry", "college_computer_science",
             "high_school_physics"}
MMLU_NON_STEM = {"high_school_us_history", "marketing"}
GPQA_REQUIRED = ["Pre-Revision Question", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                 "Incorrect Answer 3", "Explanation", "Record ID", "High-level domain", "Subdomain"]


def norm_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def read_gpqa(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def mmlu_questions(demo: Path) -> list[str]:
    qs = []
    for p in sorted((demo / "eval" / "mmlu" / "data").glob("*/*.csv")):
        with open(p, encoding="utf-8", newline="") as fh:
            qs += [row[0] for row in csv.reader(fh)]
    return qs


def gpqa_questions(demo: Path) -> list[str]:
    return [r["Question"] for name in ("gpqa_main.csv", "gpqa_diamond.csv")
            for r in read_gpqa(demo / "eval" / "gpqa" / name)[1]]


def eval_questions(demo: Path) -> list[str]:
    """Every evaluation question text: MMLU test/dev/val and GPQA ``Question``."""
    return mmlu_questions(demo) + gpqa_questions(demo)


def test_mmlu_csv_layout(demo):
    root = demo / "eval" / "mmlu" / "data"
    subjects = {split: sorted(p.name[: -len(f"_{split}.csv")] for p in (root / split).glob("*.csv"))
                for split in ("test", "dev", "val")}
    assert subjects["test"] == subjects["dev"] == subjects["val"]
    subs = set(subjects["test"])
    assert len(subs & MMLU_STEM) >= 4 and 1 <= len(subs & MMLU_NON_STEM) <= 2 and 5 <= len(subs) <= 8
    for split, n in (("test", 12), ("dev", 5), ("val", 3)):
        for sub in subs:
            path = root / split / f"{sub}_{split}.csv"
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
            assert len(rows) == n, path
            for row in rows:
                assert len(row) == 6 and row[5] in ("A", "B", "C", "D"), row
                assert len(set(row[1:5])) == 4 and all(row[1:5])
                assert len(norm_words(row[0])) >= 20
            # headerless, written by the csv module with minimal quoting
            buf = io.StringIO(newline="")
            csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerows(rows)
            assert path.read_text(encoding="utf-8") == buf.getvalue()
    qs = mmlu_questions(demo)
    assert len(qs) == len(set(qs)) == len(subs) * 20


def test_mmlu_tar_mirrors_files(demo):
    mmlu = demo / "eval" / "mmlu"
    files = {p.relative_to(mmlu).as_posix(): p.read_bytes() for p in (mmlu / "data").rglob("*") if p.is_file()}
    with tarfile.open(mmlu / "data.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert {m.name for m in members if m.isdir()} == {"data", "data/dev", "data/test", "data/val"}
        got = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            assert m.mode == (0o755 if m.isdir() else 0o644)
    assert got == files and all(n.startswith("data/") for n in got)


def test_gpqa_files(demo):
    head_main, main = read_gpqa(demo / "eval" / "gpqa" / "gpqa_main.csv")
    head_dia, diamond = read_gpqa(demo / "eval" / "gpqa" / "gpqa_diamond.csv")
    assert head_main == head_dia and set(GPQA_REQUIRED) <= set(head_main)
    assert 20 <= len(main) <= 30 and 10 <= len(diamond) < len(main)
    by_id = {r["Record ID"]: r for r in main}
    assert len(by_id) == len(main)
    for r in main:
        assert re.fullmatch(r"rec[A-Za-z0-9]{14}", r["Record ID"])
        assert r["High-level domain"] == "Demo task" and r["Subdomain"]  # the demo task (fixtures/task.py)
        assert len({r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]}) == 4
        assert len(norm_words(r["Question"])) >= 20
        assert norm_words(r["Pre-Revision Question"]) == norm_words(r["Question"])
    assert len({r["Subdomain"] for r in main}) > 1
    for r in diamond:   # a subset of main, row for row
        assert by_id[r["Record ID"]] == r
    texts = [r["Question"] for r in main]
    assert any("," in q for q in texts) and any('"' in q for q in texts)
    assert any("\n" in r["Pre-Revision Question"] for r in main)  # a quoted field with line breaks


# --------------------------------------------------------------------------- merge expectations

@pytest.fixture(scope="module")
def merge_expect(demo) -> dict:
    return json.loads((demo / "expected_merge.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def kept_records(demo, fates) -> dict[str, tuple[dict, dict]]:
    """``"<file>@<offset>" -> (fate row, record)`` for every kept row."""
    data = {rel: (demo / "raw" / rel).read_bytes() for rel in ALL_FILES}
    out = {}
    for r in fates:
        if r["fate"] == "kept":
            buf = data[r["file"]]
            out[f"{r['file']}@{r['offset']}"] = (r, json.loads(buf[r["offset"]:buf.index(b"\n", r["offset"])]))
    return out


def test_expected_merge_file_format(demo, merge_expect):
    text = (demo / "expected_merge.json").read_text("utf-8")
    assert text == json.dumps(merge_expect, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    for key in ("contaminated_ids", "duplicate_groups", "duplicates_dropped", "kept_by_reasoning",
                "kept_by_category_reasoning"):
        assert key in merge_expect


def test_contaminated_ids_match_an_independent_scan(demo, merge_expect, kept_records, fates):
    contaminated = merge_expect["contaminated_ids"]
    assert contaminated == sorted(contaminated) and set(contaminated) <= set(kept_records)
    planted = {k for k, (r, _) in kept_records.items() if r["case"] == "contaminated"}
    assert set(contaminated) == planted and len(planted) >= 10
    assert {k.split("@")[0] for k in planted} == {"SFT/chat/chat.jsonl", "SFT/math/math_v1.1.jsonl"}

    questions = eval_questions(demo)
    grams = {tuple(w[i:i + 13]) for w in map(norm_words, questions) for i in range(len(w) - 12)}
    found = set()
    for k, (_, rec) in kept_records.items():
        w = norm_words("\n".join(m["content"] for m in rec["input"]))
        if any(tuple(w[i:i + 13]) in grams for i in range(len(w) - 12)):
            found.add(k)
    assert found == set(contaminated)
    mmlu_qs = set(mmlu_questions(demo))
    sources = Counter()
    for k in contaminated:   # each quotes one evaluation question verbatim
        prompt = "\n".join(m["content"] for m in kept_records[k][1]["input"])
        hits = [q for q in questions if q in prompt]
        assert hits, k
        sources["mmlu" if hits[0] in mmlu_qs else "gpqa"] += 1
        rec = kept_records[k][1]
        if rec["category"] == "math":
            assert "\\boxed{" in rec["output"]
    assert sources["mmlu"] and sources["gpqa"]
    # contaminated rows that curation drops anyway are not listed
    dropped = [r for r in fates if r["case"].startswith("contaminated_")]
    assert dropped and all(r["fate"] != "kept" for r in dropped)


def _longest_run(a: list[str], b: list[str]) -> int:
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def test_near_miss_rows_are_kept_and_not_contaminated(demo, merge_expect, kept_records, fates):
    near = [f"{r['file']}@{r['offset']}" for r in fates if r["case"] == "near_miss"]
    assert len(near) >= 6 and sorted(near) == merge_expect.get("near_miss_ids", sorted(near))
    assert set(near) <= set(kept_records) and not set(near) & set(merge_expect["contaminated_ids"])
    qwords = [norm_words(q) for q in eval_questions(demo)]
    for k in near:
        w = norm_words("\n".join(m["content"] for m in kept_records[k][1]["input"]))
        assert max(_longest_run(w, q) for q in qwords) == 10, k


def test_duplicate_groups_and_counts(merge_expect, kept_records):
    groups: dict[str, list[str]] = {}
    for k, (_, rec) in kept_records.items():
        key = json.dumps([rec["system_prompt"], rec["input"], rec["output"]], sort_keys=True)
        groups.setdefault(key, []).append(k)
    want = sorted(sorted(g, key=lambda i: int(i.split("@")[1])) for g in groups.values() if len(g) > 1)
    got = merge_expect["duplicate_groups"]
    assert sorted(got) == got and [sorted(g, key=lambda i: int(i.split("@")[1])) for g in got] == got
    assert sorted(map(tuple, got)) == sorted(map(tuple, want))
    assert len(got) >= 3 and all(2 <= len(g) <= 3 for g in got)
    assert merge_expect["duplicates_dropped"] == sum(len(g) - 1 for g in got)
    assert {k for g in got for k in g} == {k for k, (r, _) in kept_records.items() if r["case"] == "duplicate"}

    recs = [rec for _, rec in kept_records.values()]
    assert merge_expect["kept_by_reasoning"] == dict(Counter(r["reasoning"] for r in recs))
    assert merge_expect["kept_by_category_reasoning"] == dict(
        Counter(f"{r['category']}/{r['reasoning']}" for r in recs))
    assert sum(merge_expect["kept_by_reasoning"].values()) == len(kept_records)
