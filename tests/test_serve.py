"""Serving: a REAL Triton server (Python backend, base + LoRA adapter) behind the OpenAI front end.

Needs the serving venv `.venv-serve` (built from requirements/serve.lock, see the Makefile).
One server is started for the module on the tiny demo model and an adapter trained here.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import requests
from conftest import REPO, SERVE_SYSTEM, chat_messages

pytestmark = pytest.mark.slow

SYSTEM = SERVE_SYSTEM
SAME_LENGTH_QUESTIONS = [f"Question {i}?" for i in range(4)]  # equal token counts: no padding in batches


def _messages(question, system=SYSTEM):
    return chat_messages(question, system)


@pytest.fixture(scope="module")
def serve_env():
    from reasonflow.serve.triton import TritonError, serve_env

    try:
        return serve_env(str(REPO / ".venv-serve"))
    except TritonError as e:
        pytest.fail(f"serving venv unusable: {e}\n(`make test` builds .venv-serve from requirements/serve.lock)")


@pytest.fixture(scope="module")
def tok(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir / "model")


@pytest.fixture(scope="module")
def adapter(lora_adapter):
    return lora_adapter


@pytest.fixture(scope="module")
def repos(demo_dir, adapter, tmp_path_factory):
    from reasonflow.serve.repository import deploy

    tmp = tmp_path_factory.mktemp("repos")
    settings = {"name": "reasonflow", "max_batch_size": 16, "max_queue_delay_us": 50_000, "num_threads": 1}
    out = deploy(demo_dir / "model", adapter, tmp / "triton", tmp / "vllm", settings)
    return {"triton": tmp / "triton", "vllm": tmp / "vllm", **{f"{k}_model": v for k, v in out.items()}}


@pytest.fixture(scope="module")
def server(serve_env, repos, tmp_path_factory):
    from reasonflow.serve import serving

    log_dir = tmp_path_factory.mktemp("serve_logs")
    t0 = time.monotonic()
    with serving(repos["triton"], log_dir, serve_venv=str(serve_env.venv), ready_timeout=120) as url:
        url.startup_s = time.monotonic() - t0
        yield url
    # nothing left running: the server's process is gone and its port closed
    with pytest.raises(ProcessLookupError):
        os.kill(url.triton_pid, 0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url.triton_url}/v2/health/live", timeout=2)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def _chat(client, model, question, max_tokens=16, system=SYSTEM, **kw):
    return client.chat.completions.create(model=model, messages=_messages(question, system), max_tokens=max_tokens,
                                          temperature=kw.pop("temperature", 0), **kw)


def _triton_stats(server) -> dict:
    # urllib sends "Connection: close": a kept-alive connection would delay Triton's shutdown
    with urllib.request.urlopen(f"{server.triton_url}/v2/models/{server.triton_model}/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


# --------------------------------------------------------------------------------------------- basics
def test_models_listed_and_both_answer(server, client):
    assert server.startswith("http://127.0.0.1:") and server.endswith("/v1")
    assert [m.id for m in client.models.list().data] == ["base", "lora"]
    for model in ("base", "lora"):
        r = _chat(client, model, "Question 1?")
        assert r.model == model and r.object == "chat.completion"
        choice = r.choices[0]
        assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length")
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert 1 <= r.usage.completion_tokens <= 16
        if choice.finish_reason == "length":
            assert r.usage.completion_tokens == 16
    # the trained adapter learned to stop: end-of-turn ends the answer (and is not in the text)
    r = _chat(client, "lora", "Question 1?", max_tokens=32)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content.startswith("The answer is")
    assert "<|eot_id|>" not in r.choices[0].message.content
    # same request with too few tokens: cut, "length"
    short = _chat(client, "lora", "Question 1?", max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    assert r.choices[0].message.content.startswith(short.choices[0].message.content)


def test_system_prompt_reaches_the_template(client, tok):
    """usage.prompt_tokens is the served tokenizer's count of the templated prompt incl. the system text."""
    counts = {}
    for system in (None, "short", "a much longer system prompt " * 8):
        msgs = _messages("Question 1?", system)
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        expected = len(tok(text, add_special_tokens=False)["input_ids"])
        r = client.chat.completions.create(model="base", messages=msgs, max_tokens=1, temperature=0)
        assert r.usage.prompt_tokens == expected
        counts[system] = expected
    assert counts[None] < counts["short"] < counts["a much longer system prompt " * 8]


def test_sampling_seeded_and_reproducible(client):
    a = _chat(client, "base", "Question 2?", temperature=1.0, top_p=0.9, seed=1234)
    b = _chat(client, "base", "Question 2?", temperature=1.0, top_p=0.9, seed=1234)
    assert a.choices[0].message.content == b.choices[0].message.content
    outs = {_chat(client, "base", "Question 2?", temperature=1.5, seed=s).choices[0].message.content for s in range(3)}
    assert len(outs) > 1  # the seed matters


# --------------------------------------------------------------------------------------------- errors
def test_bad_requests_are_4xx_and_the_server_keeps_serving(server, client):
    import openai

    url = f"{server}/chat/completions"
    good = {"model": "base", "messages": _messages("Question 1?"), "max_tokens": 4, "temperature": 0}
    cases = [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({**good, "messages": []}, 400, "messages"),
        ({**good, "messages": "hello"}, 400, "messages"),
        ({**good, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
        ({**good, "messages": [{"role": "user", "content": 42}]}, 400, "messages"),
        ({k: v for k, v in good.items() if k != "messages"}, 400, "messages"),
        ({**good, "model": "gpt-17"}, 404, "model"),
        ({k: v for k, v in good.items() if k != "model"}, 400, "model"),
        ({**good, "max_tokens": 0}, 400, "max_tokens"),
        ({**good, "max_tokens": -3}, 400, "max_tokens"),
        ({**good, "max_tokens": "many"}, 400, "max_tokens"),
        ({**good, "max_tokens": 10**6}, 400, "max_tokens"),  # beyond the 8192-token context
        ({**good, "max_tokens": 8192 - 20}, 400, "max_tokens"),  # context minus a ~67-token prompt
        ({**good, "temperature": 5}, 400, "temperature"),
        ({**good, "top_p": 0}, 400, "top_p"),
        ({**good, "stream": True}, 400, "stream"),
    ]
    for body, status, param in cases:
        kw = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {
            "json": body}
        r = requests.post(url, timeout=30, **kw)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error" and err["param"] == param, (body, err)
    assert requests.get(f"{server}/nowhere", timeout=10).status_code == 404
    assert requests.post(f"{server}/completions", json=good, timeout=10).status_code == 404
    # one token past the limit (prompt + max_tokens = context + 1)
    prompt = requests.post(url, json=good, timeout=30).json()["usage"]["prompt_tokens"]
    r = requests.post(url, json={**good, "max_tokens": 8192 - prompt + 1}, timeout=30)
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    # the official client raises typed errors
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=_messages("hi"), max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="lora", messages=[], max_tokens=2)
    # ... and the server still answers
    r = _chat(client, "lora", "Question 1?")
    assert r.choices[0].message.content
    assert requests.get(f"{server.rsplit('/v1', 1)[0]}/health", timeout=10).json() == {"status": "ok"}


# --------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched_and_answers_match_solo(server, client):
    solo = {(m, q): _chat(client, m, q).choices[0].message.content
            for m in ("base", "lora") for q in SAME_LENGTH_QUESTIONS}
    before = _triton_stats(server)
    jobs = [(("base", "lora")[i % 2], SAME_LENGTH_QUESTIONS[(i // 2) % 4]) for i in range(32)]
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(32) as ex:
        results = list(ex.map(lambda job: _chat(client, *job), jobs))
    elapsed = time.monotonic() - t0
    assert len(results) == 32
    for job, r in zip(jobs, results, strict=True):  # mixed base/adapter batches: per-request adapter switching
        assert r.choices[0].message.content == solo[job], job
    after = _triton_stats(server)
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == 32
    assert executions < inferences, (executions, inferences)  # the dynamic batcher merged requests
    assert max(int(b["batch_size"]) for b in after["batch_stats"]) > 1
    print(f"32 concurrent requests in {elapsed:.2f} s, {executions} executions")


def test_requests_of_different_lengths_share_a_batch(server, client):
    """Text inputs are ragged: questions of different lengths (and base beside adapter) batch together."""
    questions = [f"Question {'x' * (7 * i)}{i}?" for i in range(8)]
    before = _triton_stats(server)
    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: _chat(client, ("base", "lora")[i % 2], questions[i], max_tokens=4),
                              range(8)))
    assert all(r.usage.completion_tokens >= 1 for r in results)
    assert len({r.usage.prompt_tokens for r in results}) > 1  # the prompts do differ in length
    after = _triton_stats(server)
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == 8 and executions < inferences, (executions, inferences)


# --------------------------------------------------------------------------------------------- adapter
def test_adapter_greedy_equals_in_process_peft(client, demo_dir, adapter, tok):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    max_tokens = 24
    msgs = _messages("Question 2?")
    served = {m: _chat(client, m, "Question 2?", max_tokens=max_tokens) for m in ("base", "lora")}
    assert served["lora"].choices[0].message.content != served["base"].choices[0].message.content

    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    torch.manual_seed(0)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_dir / "model"), str(adapter)).eval()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False, eos_token_id=eot, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    body = new[: new.index(eot)] if eot in new else new
    expected = tok.decode(body, skip_special_tokens=True)
    got = served["lora"]
    assert got.choices[0].message.content == expected
    assert got.usage.prompt_tokens == ids.shape[1]
    assert got.choices[0].finish_reason == ("stop" if eot in new else "length")
    assert got.usage.completion_tokens == len(body) + (eot in new)


# --------------------------------------------------------------------------------------------- repositories
PARSE_PBTXT = r"""
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
out = {}
for path in sys.argv[1:]:
    cfg = text_format.Parse(open(path).read(), model_config_pb2.ModelConfig())
    out[path] = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
print(json.dumps(out))
"""


def test_config_pbtxt_parses_with_tritons_schema(serve_env, repos, demo_dir, adapter):
    triton_cfg = repos["triton_model"] / "config.pbtxt"
    vllm_cfg = repos["vllm_model"] / "config.pbtxt"
    out = subprocess.run([serve_env.python, "-c", PARSE_PBTXT, str(triton_cfg), str(vllm_cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout)
    cfg = parsed[str(triton_cfg)]
    assert cfg["name"] == "reasonflow" and cfg["backend"] == "python" and cfg["max_batch_size"] == 16
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == "50000"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    # text as UTF-8 in UINT8 (BYTES breaks the stub under numpy 2), of any length in one batch (ragged)
    assert {i["name"]: (i["data_type"], bool(i.get("allow_ragged_batch"))) for i in cfg["input"]} == {
        "messages": ("TYPE_UINT8", True), "model": ("TYPE_UINT8", True), "max_tokens": ("TYPE_INT32", False),
        "temperature": ("TYPE_FP32", False), "top_p": ("TYPE_FP32", False), "seed": ("TYPE_INT64", False)}
    assert {o["name"]: o["data_type"] for o in cfg["output"]} == {
        "text": "TYPE_UINT8", "finish_reason": "TYPE_UINT8", "prompt_tokens": "TYPE_INT32",
        "completion_tokens": "TYPE_INT32"}
    params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
    assert params["base_model"] == str((demo_dir / "model").resolve())
    assert json.loads(params["adapters"]) == {"lora": str(adapter.resolve())}
    assert (repos["triton_model"] / "1" / "model.py").read_text().count("class TritonPythonModel") == 1
    vcfg = parsed[str(vllm_cfg)]
    assert vcfg["backend"] == "vllm" and vcfg["instance_group"][0]["kind"] == "KIND_MODEL"


def test_gpu_instance_config(tmp_path, demo_dir, adapter):
    from reasonflow.serve.repository import write_triton_repo

    d = write_triton_repo(demo_dir / "model", adapter, tmp_path, name="m", instance_kind="KIND_GPU", gpus=[0, 1],
                          instance_count=2, max_batch_size=8)
    text = (d / "config.pbtxt").read_text()
    assert "{ count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }" in text and "preferred_batch_size: [ 4, 8 ]" in text
    with pytest.raises(ValueError):
        write_triton_repo(demo_dir / "model", adapter, tmp_path, instance_kind="KIND_TPU")
    with pytest.raises(FileNotFoundError):
        write_triton_repo(demo_dir / "model", tmp_path / "no-adapter", tmp_path)
    from reasonflow.serve.repository import deploy

    with pytest.raises(ValueError, match="max_batch"):
        deploy(demo_dir / "model", adapter, tmp_path / "t", None, {"max_batch": 4})


def test_vllm_repo_json(repos, demo_dir, adapter):
    d = repos["vllm_model"]
    assert d.name == "reasonflow_vllm"
    engine = json.loads((d / "1" / "model.json").read_text())
    loras = json.loads((d / "1" / "multi_lora.json").read_text())
    assert engine["model"] == str((demo_dir / "model").resolve()) and (demo_dir / "model" / "config.json").is_file()
    assert engine["enable_lora"] is True
    rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
    assert isinstance(engine["max_lora_rank"], int) and engine["max_lora_rank"] >= rank
    assert engine["max_loras"] >= len(loras) == 1
    assert 0 < engine["gpu_memory_utilization"] <= 1
    assert loras == {"lora": str(adapter.resolve())}
    assert all(os.path.isfile(os.path.join(p, "adapter_config.json")) for p in loras.values())


# --------------------------------------------------------------------------------------------- launcher
def test_apptainer_command(repos, demo_dir, adapter):
    from reasonflow.serve.triton import TritonServer

    srv = TritonServer(repos["triton"], "/tmp/unused.log", launcher="apptainer", image="/images/tritonserver.sif",
                       http_port=8100, grpc_port=8101, metrics_port=8102, binds=["/scratch:/scratch"])
    cmd = srv.command()
    repo, base, ad = str(repos["triton"].resolve()), str((demo_dir / "model").resolve()), str(adapter.resolve())
    i_image = cmd.index("/images/tritonserver.sif")
    assert cmd[:3] == ["apptainer", "exec", "--nv"] and cmd[i_image + 1] == "tritonserver"
    binds = [cmd[i + 1] for i in range(3, i_image) if cmd[i] == "--bind"]
    assert binds == [f"{repo}:{repo}", f"{base}:{base}", f"{ad}:{ad}", "/scratch:/scratch"]
    args = cmd[i_image + 2:]

    def arg(flag):
        return args[args.index(flag) + 1]

    assert arg("--model-repository") == repo
    assert (arg("--http-address"), arg("--http-port")) == ("127.0.0.1", "8100")
    assert (arg("--grpc-address"), arg("--grpc-port")) == ("127.0.0.1", "8101")
    assert (arg("--metrics-address"), arg("--metrics-port")) == ("127.0.0.1", "8102")
    assert "--backend-directory" not in args  # the image's own backends
    with pytest.raises(ValueError):
        TritonServer(repos["triton"], "/tmp/unused.log", launcher="apptainer")


def test_failed_start_is_reported_and_cleaned_up(serve_env, tmp_path, demo_dir, adapter):
    """A model that cannot load: a clear error with the server log's tail, and no process left."""
    from reasonflow.serve.repository import write_triton_repo
    from reasonflow.serve.triton import TritonError, TritonServer

    d = write_triton_repo(demo_dir / "model", adapter, tmp_path / "repo", name="broken")
    cfg = d / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(str((demo_dir / "model").resolve()), "/nonexistent/model"))
    srv = TritonServer(tmp_path / "repo", tmp_path / "log" / "triton.log", serve_venv=str(serve_env.venv),
                       ready_timeout=60)
    with pytest.raises(TritonError) as err:
        with srv:
            pass
    assert "/nonexistent/model" in str(err.value) and "exited" in str(err.value)
    assert srv.proc is None and srv._runtime is None
    assert "/nonexistent/model" in (tmp_path / "log" / "triton.log").read_text()


# --------------------------------------------------------------------------------------------- lifecycle
FAKE_SERVER = r"""
import http.server, signal, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "slow":
    time.sleep(60)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
print("fake tritonserver up", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _fake_triton(tmp_path, mode, **kw):
    from reasonflow.serve.triton import TritonServer

    class FakeTriton(TritonServer):
        def command(self, backend_dir=None):
            return [sys.executable, "-c", FAKE_SERVER, str(self.http_port), mode]

        def environment(self):
            return dict(os.environ)

        def _prepare_backends(self):
            pass

    return FakeTriton(tmp_path, tmp_path / "fake.log", **kw)


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_server_stops_on_exceptions_and_is_killed_after_grace(tmp_path):
    srv = _fake_triton(tmp_path, "ok", grace=5)
    with pytest.raises(RuntimeError, match="boom"):
        with srv:
            pid = srv.proc.pid
            assert srv.ready()
            raise RuntimeError("boom")
    assert srv.proc is None and _gone(pid)

    srv = _fake_triton(tmp_path, "stubborn", grace=1)  # ignores SIGTERM: SIGKILL after the grace period
    srv.start()
    pid, t0 = srv.proc.pid, time.monotonic()
    srv.stop()
    assert _gone(pid) and 0.9 < time.monotonic() - t0 < 5
    assert "fake tritonserver up" in (tmp_path / "fake.log").read_text()


def test_ready_timeout_is_a_clear_error(tmp_path):
    from reasonflow.serve.triton import TritonError

    srv = _fake_triton(tmp_path, "slow", ready_timeout=1.5, grace=1)
    t0 = time.monotonic()
    with pytest.raises(TritonError, match=r"not ready after 2 s; log .*fake.log"):
        srv.start()
    assert time.monotonic() - t0 < 10 and srv.proc is None


# --------------------------------------------------------------------------------------------- deploy rule
def test_deploy_script_under_snakemake(tmp_path, demo_dir, adapter):
    """scripts/deploy.py as the deploy rule runs it (a stand-alone Snakefile with the same shape)."""
    from conftest import BIN

    (tmp_path / "Snakefile").write_text(f'''
rule deploy:
    input:
        base="{demo_dir / "model"}",
        adapter="{adapter}",
    output:
        triton=directory("serve/triton_repo"),
        vllm=directory("serve/vllm_repo"),
    log:
        "logs/deploy.log",
    params:
        settings={{"max_batch_size": 8, "max_queue_delay_us": 1000, "vllm": {{"gpu_memory_utilization": 0.8}}}},
        name="rf",
    script:
        "{REPO / "scripts" / "deploy.py"}"
''')
    out = subprocess.run([str(BIN / "snakemake"), "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path), "--cores",
                          "1", "--quiet"], capture_output=True, text=True, timeout=300)
    log = (tmp_path / "logs" / "deploy.log").read_text() if (tmp_path / "logs" / "deploy.log").exists() else ""
    assert out.returncode == 0, out.stderr[-3000:] + log
    cfg = (tmp_path / "serve" / "triton_repo" / "rf" / "config.pbtxt").read_text()
    assert 'name: "rf"' in cfg and "max_batch_size: 8" in cfg and "max_queue_delay_microseconds: 1000" in cfg
    assert (tmp_path / "serve" / "triton_repo" / "rf" / "1" / "model.py").is_file()
    engine = json.loads((tmp_path / "serve" / "vllm_repo" / "rf_vllm" / "1" / "model.json").read_text())
    assert engine["gpu_memory_utilization"] == 0.8
    assert "wrote" in log
