"""Evaluation: benchmark prep, answer extraction, scoring, and the chat client.

Pure tests need no server. Client tests come in two kinds:

* ``test_transport_*``: a tiny stdlib HTTP server started in-process, used ONLY to inject
  transport failures (503s, 400s, slow answers, a killed client) and to count requests. It
  answers in the OpenAI shape with a canned sentence; it is not a model and says nothing about
  model quality.
* ``test_endpoint_*``: the real serving stack (``reasonflow.serve.serving`` on the demo model)
  through the ``openai_url`` fixture; skipped while ``reasonflow.serve`` does not exist.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from reasonflow.evaluate import prep
from reasonflow.evaluate.client import (
    ChatClient,
    RequestRejected,
    Sampling,
    TransportError,
    build_payload,
    chat_url,
    request_seed,
    run_items,
)
from reasonflow.evaluate.extract import extract
from reasonflow.evaluate.prompts import messages, render
from reasonflow.evaluate.score import accuracy_stderr, compare, plot, score_records, summarize

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def eval_src(demo_dir) -> Path:
    return demo_dir / "eval"


def _prep(tmp: Path, benchmark: str, source, **kw) -> tuple[bytes, bytes, dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    side = prep.prepare(benchmark, str(source), tmp / f"{benchmark}.jsonl", tmp / f"{benchmark}.json",
                        cache_dir=tmp / "dl", **kw)
    return (tmp / f"{benchmark}.jsonl").read_bytes(), (tmp / f"{benchmark}.json").read_bytes(), side


# -- prep (pure) ----------------------------------------------------------------------------------


def test_stem_subject_list_is_the_26_of_the_mmlu_categories():
    assert len(prep.MMLU_ALL) == 57 and len(prep.MMLU_STEM) == 26
    assert {prep.MMLU_SUBCATEGORIES[s] for s in prep.MMLU_STEM} == set(prep.STEM_SUBCATEGORIES)
    assert "machine_learning" in prep.MMLU_STEM and "virology" in prep.MMLU_STEM
    assert "formal_logic" not in prep.MMLU_STEM and "marketing" not in prep.MMLU_STEM


def test_prep_is_byte_identical_across_runs(tmp_path, eval_src):
    for bench, src in [("mmlu", eval_src / "mmlu" / "data.tar"), ("gpqa_main", eval_src / "gpqa" / "gpqa_main.csv"),
                       ("gpqa_diamond", eval_src / "gpqa" / "gpqa_diamond.csv")]:
        a = _prep(tmp_path / "a", bench, src)
        b = _prep(tmp_path / "b", bench, src)
        assert a[0] == b[0] and a[1] == b[1], bench
        assert a[2]["sha256"] == hashlib.sha256(a[0]).hexdigest()
        ids = [json.loads(line)["id"] for line in a[0].decode().splitlines()]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_diamond_alone_equals_diamond_prepared_with_main(tmp_path, eval_src):
    alone = _prep(tmp_path / "alone", "gpqa_diamond", eval_src / "gpqa" / "gpqa_diamond.csv")
    _prep(tmp_path / "both", "gpqa_main", eval_src / "gpqa" / "gpqa_main.csv")
    together = _prep(tmp_path / "both", "gpqa_diamond", eval_src / "gpqa" / "gpqa_diamond.csv")
    assert alone[:2] == together[:2]
    # the same question gets the same option order in both sets (diamond rows are main rows)
    main = {it["id"].split("/")[1]: it for it in prep.read_items(tmp_path / "both" / "gpqa_main.jsonl")}
    for it in prep.read_items(tmp_path / "alone" / "gpqa_diamond.jsonl"):
        m = main[it["id"].split("/")[1]]
        assert (m["choices"], m["answer"]) == (it["choices"], it["answer"])


def test_mmlu_stem_vs_all_on_the_demo_tarball(tmp_path, eval_src, caplog):
    tar = eval_src / "mmlu" / "data.tar"
    with caplog.at_level("WARNING"):
        _, _, stem = _prep(tmp_path / "stem", "mmlu", tar, subjects="stem")
    assert "21 of 26 selected subjects" in caplog.text and "virology" in caplog.text
    _, _, every = _prep(tmp_path / "all", "mmlu", tar, subjects="all")
    demo_stem = ["anatomy", "college_biology", "college_chemistry", "college_computer_science", "high_school_physics"]
    assert stem["subjects_used"] == demo_stem and stem["n"] == 60
    assert every["subjects_used"] == sorted(demo_stem + ["high_school_us_history", "marketing"]) and every["n"] == 84
    assert len(stem["subjects_missing"]) == 21 and len(every["subjects_missing"]) == 50
    # the unpacked folder gives the same items as the tarball; only the source digest differs
    folder = _prep(tmp_path / "dir", "mmlu", eval_src / "mmlu" / "data", subjects="stem")
    assert folder[0] == _prep(tmp_path / "stem2", "mmlu", tar, subjects="stem")[0]
    # an explicit list, and the first test row of anatomy as written in the raw CSV
    _, _, one = _prep(tmp_path / "one", "mmlu", tar, subjects=["anatomy"])
    first = prep.read_items(tmp_path / "one" / "mmlu.jsonl")[0]
    row = next(csv.reader(io.StringIO((eval_src / "mmlu/data/test/anatomy_test.csv").read_text())))
    assert one["n"] == 12 and first == {"id": "mmlu/anatomy/00000", "benchmark": "mmlu", "subject": "anatomy",
                                        "question": row[0], "choices": row[1:5], "answer": row[5]}
    with pytest.raises(ValueError, match="unknown MMLU subjects"):
        prep.mmlu_subjects(["anatomy", "astrology"])


def test_sha256_mismatch_names_url_expected_and_got(tmp_path, eval_src):
    tar = eval_src / "mmlu" / "data.tar"
    real = prep.sha256_file(tar)
    url = tar.as_uri()
    wrong = "0" * 64
    with pytest.raises(prep.ChecksumError) as err:
        prep.fetch(url, tmp_path / "data.tar", sha256=wrong)
    assert url in str(err.value) and wrong in str(err.value) and real in str(err.value)
    assert not (tmp_path / "data.tar").exists() and not (tmp_path / "data.tar.part").exists()
    assert prep.fetch(url, tmp_path / "data.tar", sha256=real) == real  # file:// works
    assert prep.fetch(str(tar), tmp_path / "copy.tar") == real  # plain path works
    with pytest.raises(prep.ChecksumError, match=wrong):
        _prep(tmp_path / "p", "mmlu", tar, sha256=wrong)
    side = _prep(tmp_path / "q", "mmlu", url, sha256=real)[2]  # URL source goes through fetch
    assert side["source"] == {"name": "data.tar", "sha256": real}


def test_gpqa_shuffle_varies_letters_keeps_the_correct_text_and_is_reproducible(tmp_path, eval_src):
    src = eval_src / "gpqa" / "gpqa_main.csv"
    items = {it["id"].split("/")[1]: it for it in prep.gpqa_items(src, "gpqa_main")[0]}
    with open(src, encoding="utf-8", newline="") as fh:
        rows = {r["Record ID"]: r for r in csv.DictReader(fh)}
    assert len(items) == len(rows) == 24
    for rid, it in items.items():
        row = rows[rid]
        assert it["choices"][ord(it["answer"]) - 65] == row["Correct Answer"].strip()
        assert sorted(it["choices"]) == sorted(row[c].strip() for c in
                                               ["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"])
        assert it["subject"] == f"{row['High-level domain']}/{row['Subdomain']}"
    assert len({it["answer"] for it in items.values()}) == 4
    assert prep.gpqa_permutation("recX", 42) == prep.gpqa_permutation("recX", 42)
    other = prep.gpqa_items(src, "gpqa_main", seed=7)[0]
    assert [it["answer"] for it in other] != [items[it["id"].split("/")[1]]["answer"] for it in other]


def test_prep_over_http_retries_5xx(tmp_path, eval_src):
    data = (eval_src / "mmlu" / "data.tar").read_bytes()
    with StubServer(script=[503], body=data) as srv:
        sleeps = []
        got = prep.fetch(f"{srv.url}/data.tar", tmp_path / "d.tar", hashlib.sha256(data).hexdigest(), sleep=sleeps.append)
    assert got == hashlib.sha256(data).hexdigest() and srv.count == 2 and sleeps == [2.0]


# -- prompts --------------------------------------------------------------------------------------


def test_reference_prompt_and_system_prompts():
    item = {"id": "x", "question": "What is 2+2?", "choices": ["3", "4", "5", "22"], "answer": "B"}
    text = render("reference", item)
    assert "Question: What is 2+2?" in text and "A. 3\nB. 4\nC. 5\nD. 22" in text
    assert "The final answer is [letter]" in text and "step by step" in text
    assert [m["content"] for m in messages(item, "on")][0] == "detailed thinking on"
    assert [m["content"] for m in messages(item, "off")][0] == "detailed thinking off"
    with pytest.raises(ValueError, match="unknown prompt id"):
        render("nope", item)


# -- extraction (pure) ----------------------------------------------------------------------------

THINK = "<think>\nOkay, the options... maybe The final answer is A? Let me check again.\n</think>\n\n"
EXTRACTION_TABLE = [
    # (response, expected letter, expected rule)
    ("The final answer is C", "C", "final_answer"),
    ("Mitochondria make ATP.\n\nThe final answer is B.", "B", "final_answer"),
    ("The final answer is: **(C)**", "C", "final_answer"),
    ("**The final answer is D**", "D", "final_answer"),
    ("The final answer is [A]", "A", "final_answer"),
    ("The final answer is (B).", "B", "final_answer"),
    ("the final answer is c.", "C", "final_answer"),
    ("THE FINAL ANSWER IS: d", "D", "final_answer"),
    ("The final answer is $\\boxed{B}$", "B", "final_answer"),
    ("The final answer is Option C", "C", "final_answer"),
    (THINK + "Ohm's law gives 2 A.\n\nThe final answer is D", "D", "final_answer"),
    ("First guess: The final answer is A. Wait, that ignores friction.\nThe final answer is C", "C", "final_answer"),
    ("Answer: B\n\nOn reflection, the final answer is D.", "D", "final_answer"),  # rule priority over order
    ("Answer: (C)", "C", "answer_colon"),
    ("**Answer:** D", "D", "answer_colon"),
    ("Final Answer: A", "A", "answer_colon"),
    ("answer: b", "B", "answer_colon"),
    ("Answer: A\nHmm, no.\nAnswer: C", "C", "answer_colon"),
    ("So the result is $\\boxed{B}$.", "B", "boxed"),
    ("Therefore \\boxed{\\text{D}}", "D", "boxed"),
    ("\\boxed{(a)}", "A", "boxed"),
    (THINK + "Thus \\boxed{A} ... no, \\boxed{C}", "C", "boxed"),
    ("</think>The final answer is A", "A", "final_answer"),  # template opened the think block itself
    # no answer
    ("<think>\nLet me compute the determinant. The final answer is B", None, None),  # unclosed: all thinking
    (THINK, None, None),  # the only answer is inside the think block
    ("<think>The final answer is C</think>\nI cannot decide.", None, None),
    ("The answer is B", None, None),  # not one of the three forms
    ("the final answer is a prime number", None, None),  # lower-case 'a' is a word
    ("Answer: Although B looks tempting, ...", None, None),  # 'A' runs into 'lthough'
    ("The final answer is [letter], where [letter] is one of A, B, C or D.", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("text, letter, rule", EXTRACTION_TABLE)
def test_extraction_table(text, letter, rule):
    got = extract(text)
    assert (got.letter, got.rule) == (letter, rule)


def test_extraction_think_states_and_reference_mode():
    assert extract("<think>x").think == "unclosed"
    assert extract(THINK + "The final answer is B").think == "closed"
    assert extract("The final answer is B").think == "none"
    # the reference scorer: first case-sensitive match anywhere, think block included
    assert extract(THINK + "The final answer is D", "reference").letter == "A"
    assert extract("the final answer is D", "reference").letter is None


# -- scoring (pure, hand-computed) ----------------------------------------------------------------

ITEMS = [
    {"id": "q1", "subject": "s1", "answer": "A"},
    {"id": "q2", "subject": "s1", "answer": "B"},
    {"id": "q3", "subject": "s2", "answer": "C"},
]
# repeat 0: correct, wrong, no answer; repeat 1: correct, correct, no answer (unclosed think)
RESPONSES = [
    ("q1", 0, "The final answer is A", 10, 1.0),
    ("q2", 0, "Answer: C", 20, 2.0),
    ("q3", 0, "I do not know.", 30, 3.0),
    ("q1", 1, "<think>easy</think>The final answer is A", 40, 4.0),
    ("q2", 1, "so \\boxed{B}", 50, 5.0),
    ("q3", 1, "<think>The final answer is C", None, 6.0),
]


def _records(rows):
    return [{"id": i, "repeat": r, "text": t, "completion_tokens": tok, "latency_s": lat} for i, r, t, tok, lat in rows]


def _scored(model, rows):
    return score_records(ITEMS, _records(rows), model=model, benchmark="bench", mode="on", prompt_id="reference",
                         dataset_sha256="abc")


def test_accuracy_and_stderr_by_hand(tmp_path):
    df = _scored("base", RESPONSES)
    assert df["correct"].tolist() == [1, 1, 0, 1, 0, 0]  # sorted by (id, repeat)
    assert df["rule"].tolist() == ["final_answer", "final_answer", "answer_colon", "boxed", "", ""]
    s = summarize(df).iloc[0]
    # accuracy 3/6; per-repeat accuracies 1/3 and 2/3: sd = (1/3)/sqrt(2), stderr = sd/sqrt(2) = 1/6
    assert s["n"] == 3 and s["repeats"] == 2
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["stderr"] == pytest.approx(1 / 6) and s["stderr_method"] == "repeats"
    assert s["no_answer_rate"] == pytest.approx(2 / 6)
    assert s["mean_completion_tokens"] == pytest.approx(30.0)  # (10+20+30+40+50)/5, missing usage skipped
    assert s["latency_p50_s"] == pytest.approx(3.5)  # 1..6: midpoint of 3 and 4
    assert s["latency_p95_s"] == pytest.approx(5.75)  # 1 + 0.95 * 5
    # one repeat: binomial over items, p = 1/3, n = 3: sqrt(1/3 * 2/3 / 3) = sqrt(2/27) = 0.27217
    acc, se, method = accuracy_stderr(df[df["repeat"] == 0]["correct"], df[df["repeat"] == 0]["repeat"])
    assert (acc, method) == (pytest.approx(1 / 3), "binomial") and se == pytest.approx(0.272166, abs=1e-6)

    # the adapter answers q3 in repeat 0: 4/6; per-repeat 2/3 and 2/3 -> stderr 0
    adapter = [(i, r, "The final answer is C" if (i, r) == ("q3", 0) else t, tok, lat) for i, r, t, tok, lat in RESPONSES]
    summary = summarize(pd.concat([df, _scored("adapter", adapter)]))
    c = compare(summary, "base").iloc[0]
    assert (c["model"], c["baseline"]) == ("adapter", "base")
    assert c["model_accuracy"] == pytest.approx(4 / 6) and c["delta_accuracy"] == pytest.approx(1 / 6)
    assert c["delta_stderr"] == pytest.approx(1 / 6)  # sqrt((1/6)^2 + 0^2)
    assert c["delta_no_answer_rate"] == pytest.approx(-1 / 6) and bool(c["same_dataset"])
    plot(summary, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_roundtrip_through_csv(tmp_path):
    from reasonflow.evaluate.score import report, write_csv

    write_csv(_scored("base", RESPONSES), tmp_path / "base.csv")
    write_csv(_scored("adapter", RESPONSES), tmp_path / "adapter.csv")
    summary = report([tmp_path / "base.csv", tmp_path / "adapter.csv"], tmp_path / "s.csv", tmp_path / "c.csv",
                     tmp_path / "p.png")
    assert summary["accuracy"].tolist() == [pytest.approx(0.5)] * 2
    back = pd.read_csv(tmp_path / "base.csv", keep_default_na=False)
    assert back["response"].tolist()[3] == "so \\boxed{B}"  # raw response kept (sorted: q2 repeat 1)
    assert pd.read_csv(tmp_path / "c.csv")["delta_accuracy"].tolist() == [0.0]


def test_step_curve_puts_kept_adapters_before_the_final_one_beside_the_base(tmp_path):
    """report(..., out_steps): step-N models at step N, the final adapter at final_step, the base's
    values on every row; summary.csv keeps evaluate.models only."""
    from reasonflow.evaluate.score import report, write_csv

    better = [(i, r, "The final answer is C" if i == "q3" else t, tok, lat) for i, r, t, tok, lat in RESPONSES]
    for name, rows in (("base", RESPONSES), ("adapter", better), ("step-5", RESPONSES)):
        write_csv(_scored(name, rows), tmp_path / f"{name}.csv")
    summary = report([tmp_path / "base.csv", tmp_path / "adapter.csv"], tmp_path / "s.csv", tmp_path / "c.csv",
                     tmp_path / "p.png", step_csvs=[tmp_path / "step-5.csv"], out_steps=tmp_path / "steps.csv",
                     out_steps_png=tmp_path / "steps.png", final_step=10)
    assert sorted(summary["model"]) == ["adapter", "base"]
    curve = pd.read_csv(tmp_path / "steps.csv")
    assert curve["step"].tolist() == [5, 10] and curve["model"].tolist() == ["step-5", "adapter"]
    assert curve["accuracy"].tolist() == [pytest.approx(0.5), pytest.approx(5 / 6)]
    assert curve["no_answer_rate"].tolist() == [pytest.approx(2 / 6), 0.0]
    assert curve["baseline_accuracy"].tolist() == [pytest.approx(0.5)] * 2
    assert (tmp_path / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_item_csv_keeps_answers_with_a_lone_carriage_return(tmp_path):
    # a sampled answer of the random demo model held a bare "\r": unquoted, pandas split its row in two
    from reasonflow.evaluate.score import read_item_csvs, write_csv

    rows = [(i, r, t.replace(" ", " \r", 1) + "\r", tok, lat) for i, r, t, tok, lat in RESPONSES]
    df = _scored("base", rows)
    write_csv(df, tmp_path / "base.csv")
    back = read_item_csvs([tmp_path / "base.csv"])
    assert len(back) == len(df) == len(pd.read_csv(tmp_path / "base.csv"))
    assert back["response"].tolist() == df["response"].tolist()
    assert back["correct"].tolist() == df["correct"].tolist()


# -- transport stub (NOT a model): failure injection and request counting ---------------------------


class StubServer:
    """Stdlib HTTP server: replays ``script`` statuses first (e.g. [503, 503]), then answers 200.

    Chat requests get an OpenAI-shaped body whose content is ``answer_for(payload)``; other paths
    get ``body`` bytes. Every request is counted; ``reject_seed`` answers 400 for that seed.
    """

    def __init__(self, script=(), body=b"", delay=0.0, answer_for=None, reject_seed=None):
        self.script, self.body, self.delay = list(script), body, delay
        self.answer_for = answer_for or (lambda p: "The final answer is A")
        self.reject_seed = reject_seed
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, data: bytes, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, payload):
                with stub.lock:
                    stub.requests.append(payload)
                    status = stub.script.pop(0) if stub.script else 200
                if stub.delay:
                    time.sleep(stub.delay)
                if payload is not None and stub.reject_seed is not None and payload.get("seed") == stub.reject_seed:
                    status = 400
                if status != 200:
                    return self._send(status, json.dumps({"error": f"injected {status}"}).encode())
                if payload is None:
                    return self._send(200, stub.body, "application/octet-stream")
                text = stub.answer_for(payload)
                body = {"id": "stub", "object": "chat.completion", "model": payload.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": len(text.split()), "total_tokens": 60}}
                self._send(200, json.dumps(body).encode())

            def do_GET(self):
                self._handle(None)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self._handle(json.loads(self.rfile.read(n)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def count(self) -> int:
        return len(self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _items(n=6):
    return [{"id": f"t/{i:03d}", "benchmark": "t", "subject": "s", "question": f"Question number {i}?",
             "choices": ["w", "x", "y", "z"], "answer": "A"} for i in range(n)]


def test_chat_url_forms():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


def test_transport_retry_503_twice_then_200():
    sleeps = []
    with StubServer(script=[503, 503]) as srv:
        client = ChatClient(srv.url, retries=4, backoff=0.5, jitter=False, sleep=sleeps.append)
        payload = build_payload(_items(1)[0], 0, model="m", mode="on", prompt_id="reference", sampling=Sampling())
        out = client.complete(payload)
    assert srv.count == 3 and out["attempts"] == 3 and sleeps == [0.5, 1.0]  # exponential backoff
    assert out["text"] == "The final answer is A" and out["completion_tokens"] == 5
    sent = srv.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "detailed thinking on"}
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 2048 and sent["model"] == "m"


def test_transport_4xx_is_not_retried_and_5xx_gives_up():
    with StubServer(script=[400]) as srv:
        with pytest.raises(RequestRejected, match="HTTP 400"):
            ChatClient(srv.url, retries=4, sleep=lambda s: None).complete({"model": "m"})
        assert srv.count == 1
    with StubServer(script=[503] * 10) as srv:
        with pytest.raises(TransportError, match="3 attempts.*HTTP 503"):
            ChatClient(srv.url, retries=2, sleep=lambda s: None).complete({"model": "m"})
        assert srv.count == 3
    # connection refused (nothing listens on the closed stub's port) is a transport error
    sleeps = []
    with pytest.raises(TransportError, match="ConnectionError"):
        ChatClient(srv.url, retries=2, backoff=0.25, jitter=False, sleep=sleeps.append).complete({"model": "m"})
    assert sleeps == [0.25, 0.5]


def test_transport_cache_resume_semantics(tmp_path):
    cache = tmp_path / "cache.jsonl"
    items = _items(6)
    kw = dict(model="m", mode="off", repeats=2, cache=cache, concurrency=3, progress=False,
              sampling=Sampling(temperature=0.6, top_p=0.95, max_tokens=64, seed=1))
    with StubServer() as srv:
        client = ChatClient(srv.url, sleep=lambda s: None)
        recs, stats = run_items(items, client, **kw)
        assert srv.count == 12 and (stats.asked, stats.cached) == (12, 0)
        assert [(r["id"], r["repeat"]) for r in recs] == [(it["id"], r) for it in items for r in (0, 1)]
        seeds = {(p["messages"][1]["content"], p["seed"]) for p in srv.requests}
        assert len(seeds) == 12 and all(p["temperature"] == 0.6 and p["top_p"] == 0.95 for p in srv.requests)
        assert recs[0]["seed"] == request_seed(1, "t/000", 0)

        again, stats = run_items(items, client, **kw)  # everything cached: nothing asked
        assert srv.count == 12 and (stats.asked, stats.cached) == (0, 12) and again == recs

        # a torn last line (killed mid-write) is ignored and re-asked; the file stays valid JSONL
        lines = cache.read_text().splitlines(keepends=True)
        cache.write_text("".join(lines[:-1]) + lines[-1][:25])
        _, stats = run_items(items, client, **kw)
        assert srv.count == 13 and stats.asked == 1
        full = [ln for ln in cache.read_text().splitlines() if ln.startswith("{") and ln.endswith("}")]
        assert len(full) == 12 and len(cache.read_text().splitlines()) == 13  # append-only: torn line stays
        _, stats = run_items(items, client, **kw)  # ... and does not break later resumes
        assert srv.count == 13 and stats.asked == 0

        # other settings (max_tokens) or other weights (salt) never reuse the cached answers
        _, stats = run_items(items, client, **{**kw, "sampling": Sampling(temperature=0.6, top_p=0.95, max_tokens=65, seed=1)})
        assert stats.asked == 12 and stats.stale_cache_lines == 12
        _, stats = run_items(items, client, **kw, cache_salt="adapter-v2")
        assert stats.asked == 12


def test_transport_failure_stops_after_inflight_and_resumes(tmp_path):
    cache = tmp_path / "cache.jsonl"
    items = _items(8)
    bad = request_seed(0, "t/005", 0)
    with StubServer(reject_seed=bad) as srv:
        client = ChatClient(srv.url, sleep=lambda s: None)
        with pytest.raises(RequestRejected):
            run_items(items, client, model="m", mode="on", cache=cache, concurrency=2, progress=False)
        done = {json.loads(line)["id"] for line in cache.read_text().splitlines()}
        assert "t/005" not in done and "t/000" in done
        # recording the failure instead: it becomes an error row with no text, everything else is cached
        recs, stats = run_items(items, client, model="m", mode="on", cache=cache, concurrency=2, progress=False,
                                on_error="record")
        assert stats.asked == 8 - len(done) and stats.errors == 1
        assert [r["id"] for r in recs if r["error"]] == ["t/005"] and "HTTP 400" in recs[5]["error"]


def _write_items(tmp: Path, items) -> tuple[Path, Path]:
    out, meta = tmp / "items.jsonl", tmp / "items.json"
    prep.write_items(items, out, meta, {"benchmark": "t"})
    return out, meta


def _kill_and_resume(tmp: Path, url: str, items, settings: dict, min_lines: int, concurrency: int = 2, model="m"):
    """Run the CLI client in a subprocess, SIGKILL it once ``min_lines`` answers are cached, rerun it."""
    items_path, meta = _write_items(tmp, items)
    cache = tmp / "cache.jsonl"
    cmd = [PY, "-m", "reasonflow.evaluate", "run", "--url", url, "--items", str(items_path), "--meta", str(meta),
           "--out", str(tmp / "out.csv"), "--cache", str(cache), "--model", model, "--benchmark", "t",
           "--mode", "on", "--no-progress", "--settings", json.dumps({"concurrency": concurrency, **settings})]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    err = open(tmp / "client.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if cache.is_file() and cache.read_bytes().count(b"\n") >= min_lines:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the client ended before it could be killed: " + (tmp / "client.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        err.close()
    before = cache.read_bytes()
    done_before = [(r["id"], r["repeat"]) for r in map(json.loads, before.decode().splitlines()) if r]
    assert min_lines <= len(done_before) < len(items)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    after = cache.read_bytes()
    done_after = [(r["id"], r["repeat"]) for r in map(json.loads, after.decode().splitlines())]
    assert after.startswith(before)  # append-only
    assert len(done_after) == len(set(done_after)) == len(items)  # nothing finished was asked twice
    assert len(pd.read_csv(tmp / "out.csv")) == len(items)
    return set(done_before)


def test_transport_kill_and_resume_subprocess(tmp_path):
    items = _items(30)
    seed_of = {request_seed(0, it["id"], 0): it["id"] for it in items}
    with StubServer(delay=0.1) as srv:
        done_before = _kill_and_resume(tmp_path, srv.url, items, {}, min_lines=6)
        asked = [seed_of[p["seed"]] for p in srv.requests]
    # server-side count: every answer cached before the kill was asked exactly once
    assert all(asked.count(i) == 1 for i, _ in done_before)
    assert set(asked) == {it["id"] for it in items} and len(asked) <= len(items) + 2  # + the 2 in flight


# -- the thin Snakemake scripts, driven with a stand-in `snakemake` object ---------------------------

_DRIVER = """
import json, runpy, sys
from snakemake.iocontainers import Namedlist
spec = json.loads(sys.argv[2])
class Smk: pass
smk = Smk()
for part in ("input", "output", "params", "log"):
    setattr(smk, part, Namedlist(fromdict=spec.get(part, {})))
smk.threads = 1
runpy.run_path(sys.argv[1], init_globals={"snakemake": smk}, run_name="__main__")
"""


def _script(name: str, **spec):
    proc = subprocess.run([PY, "-c", _DRIVER, str(REPO / "scripts" / name), json.dumps(spec)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    log = Path(spec["log"]["log"]).read_text() if Path(spec["log"]["log"]).is_file() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + log[-3000:]
    return log


def test_transport_snakemake_scripts_chain(tmp_path, eval_src):
    d = tmp_path
    log = _script("eval_prep.py", output={"jsonl": f"{d}/mmlu.jsonl", "meta": f"{d}/mmlu.json"},
                  params={"benchmark": "mmlu", "source": str(eval_src / "mmlu" / "data.tar"), "sha256": "",
                          "subjects": "stem", "seed": 42, "cache_dir": f"{d}/dl"},
                  log={"log": f"{d}/prep.log"})
    assert "mmlu: 60 items" in log and "21 of 26 selected subjects" in log
    answers = {"base": "The final answer is A", "adapter": "<think>hmm</think>The final answer is B"}
    with StubServer(answer_for=lambda p: answers[p["model"]]) as srv:
        for model in answers:
            _script("evaluate.py", input={"jsonl": f"{d}/mmlu.jsonl", "meta": f"{d}/mmlu.json"},
                    output={"csv": f"{d}/{model}.csv", "run": f"{d}/{model}.json"},
                    params={"model": model, "served_model": model, "benchmark": "mmlu", "mode": "on",
                            "settings": {"concurrency": 4, "max_tokens": 64, "repeats": 1},
                            "cache": f"{d}/cache/{model}.jsonl", "url": srv.url},
                    log={"log": f"{d}/{model}.log"})
        assert srv.count == 120
    _script("eval_report.py", input={"csvs": [f"{d}/base.csv", f"{d}/adapter.csv"]},
            output={"summary": f"{d}/summary.csv", "comparison": f"{d}/comparison.csv", "plot": f"{d}/acc.png"},
            params={"baseline": "base"}, log={"log": f"{d}/report.log"})
    items = prep.read_items(d / "mmlu.jsonl")
    summary = pd.read_csv(d / "summary.csv").set_index("model")
    for model, letter in (("base", "A"), ("adapter", "B")):
        expected = sum(it["answer"] == letter for it in items) / len(items)
        assert summary.loc[model, "accuracy"] == pytest.approx(expected)
        assert summary.loc[model, "n"] == 60 and summary.loc[model, "dataset_sha256"] == json.loads(
            (d / "mmlu.json").read_text())["sha256"]
    comp = pd.read_csv(d / "comparison.csv")
    assert len(comp) == 1 and comp.loc[0, "delta_accuracy"] == pytest.approx(
        summary.loc["adapter", "accuracy"] - summary.loc["base", "accuracy"])
    assert json.loads((d / "base.json").read_text())["stats"]["asked"] == 60


# -- the real serving stack (skipped until reasonflow.serve exists) --------------------------------


@pytest.fixture(scope="module")
def triton_repo(demo_dir, tmp_path_factory):
    """A Triton repository (reasonflow.serve) of the demo base model, served as "base"; skips without one."""
    serve = pytest.importorskip("reasonflow.serve")
    if not hasattr(serve, "serving"):
        pytest.skip("reasonflow.serve.serving is not there yet")
    from reasonflow.serve.triton import TritonError, serve_env

    try:
        env = serve_env(str(REPO / ".venv-serve"))
    except TritonError as exc:
        pytest.skip(f"no Triton serving environment: {exc}")
    tmp = tmp_path_factory.mktemp("serve")
    # one CPU thread for the model (the machine is shared)
    serve.write_triton_repo(demo_dir / "model", None, tmp / "repo", max_batch_size=16, num_threads=1)
    return {"repo": tmp / "repo", "serve_venv": str(env.venv)}


@pytest.fixture(scope="module")
def openai_url(triton_repo, tmp_path_factory):
    """Base URL (``.../v1``) of the real stack -- Triton + the OpenAI front end -- on the demo model."""
    from reasonflow.serve import serving

    logs = tmp_path_factory.mktemp("serve_logs")
    with serving(triton_repo["repo"], logs, serve_venv=triton_repo["serve_venv"], ready_timeout=180) as url:
        yield url


@pytest.mark.slow
def test_endpoint_end_to_end_on_the_demo_model(openai_url, tmp_path, eval_src):
    from reasonflow.evaluate.job import EvalSettings, evaluate

    _prep(tmp_path, "gpqa_diamond", eval_src / "gpqa" / "gpqa_diamond.csv")
    settings = EvalSettings.from_config({"max_tokens": 16, "concurrency": 4, "limit": 4, "repeats": 2,
                                         "temperature": 0.7, "on_error": "raise"})
    run = evaluate(openai_url, tmp_path / "gpqa_diamond.jsonl", tmp_path / "gpqa_diamond.json", tmp_path / "o.csv",
                   model_label="base", served_model="base", benchmark="gpqa_diamond", mode="on", settings=settings,
                   cache_path=tmp_path / "c.jsonl", progress=False)
    df = pd.read_csv(tmp_path / "o.csv", keep_default_na=False)
    assert len(df) == 8 and run["stats"]["asked"] == 8
    assert (df["completion_tokens"].astype(int) <= 16).all() and (df["latency_s"].astype(float) > 0).all()
    assert math.isfinite(run["accuracy"])


@pytest.mark.slow
def test_endpoint_kill_and_resume(openai_url, tmp_path):
    # counted through the cache: after the rerun every (id, repeat) appears once, the pre-kill lines a prefix
    _kill_and_resume(tmp_path, openai_url, _items(40), {"max_tokens": 64, "temperature": 1.0}, min_lines=4,
                     model="base")


@pytest.mark.slow
def test_endpoint_evaluate_script_starts_the_server(triton_repo, tmp_path, eval_src):
    d = tmp_path
    _prep(d, "gpqa_main", eval_src / "gpqa" / "gpqa_main.csv")
    log = _script("evaluate.py", input={"jsonl": f"{d}/gpqa_main.jsonl", "meta": f"{d}/gpqa_main.json",
                                        "triton": str(triton_repo["repo"])},
                  output={"csv": f"{d}/out.csv", "run": f"{d}/run.json"},
                  params={"model": "base", "served_model": "base", "benchmark": "gpqa_main", "mode": "off",
                          "settings": {"concurrency": 8, "max_tokens": 16, "limit": 8}, "cache": f"{d}/cache.jsonl",
                          "serve": {"serve_venv": triton_repo["serve_venv"], "ready_timeout": 180,
                                    "log_dir": f"{d}/serve_logs"}},
                  log={"log": f"{d}/evaluate.log"})
    assert "accuracy" in log and (d / "serve_logs" / "tritonserver.log").is_file()
    run = json.loads((d / "run.json").read_text())
    assert run["stats"]["asked"] == 8 and run["model_fingerprint"]
    assert len(pd.read_csv(d / "out.csv")) == 8
