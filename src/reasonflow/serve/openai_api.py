"""OpenAI-compatible front end over Triton (stdlib only: ``http.server`` + ``urllib``).

``POST /v1/chat/completions`` (``model``, ``messages``, ``temperature``, ``top_p``, ``max_tokens`` /
``max_completion_tokens``, ``seed``; with the vLLM engine also ``stop``, ``stream`` (+
``stream_options.include_usage``) and vLLM's ``ignore_eos``) -> one Triton request on the
Python-backend model written by :func:`reasonflow.serve.repository.write_triton_repo`:
``/infer`` for the ``hf`` engine, ``/generate`` or ``/generate_stream`` (server-sent events,
relayed as OpenAI ``chat.completion.chunk`` events ending in ``data: [DONE]``) for the decoupled
``vllm`` engine; ``GET /v1/models``; ``GET /health``.
Errors use OpenAI's format ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed
body or field (including ``max_tokens`` beyond the context, checked by the backend with the
served tokenizer), 404 for an unknown model or path, 502/503 when Triton fails. Each request is
handled in its own thread, so concurrent requests reach Triton together and its dynamic batcher
batches them.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reasonflow.serve.backend_model import RequestError, parse_messages

log = logging.getLogger(__name__)

MAX_BODY = 16 * 2**20
PARAMS = ("messages", "model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "ignore_eos")
STREAMING_ENGINES = ("vllm",)  # engines with stop strings, streaming and ignore_eos


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ApiError(400, f"{key} must be a number", key)
    if v > hi or v < lo or (lo_open and v == lo):
        raise ApiError(400, f"{key} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", key)
    return float(v)


def _int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"{key} must be an integer", key)
    return v


def _bool(body: dict, key: str) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"{key} must be true or false", key)
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops) or len(stops) > 16:
        raise ApiError(400, "stop must be a non-empty string or a list of at most 16 non-empty strings", "stop")
    return stops


def parse_chat_request(body, model_ids: dict[str, str], engine: str = "hf") -> dict:
    """Validate an OpenAI chat-completions body -> the Triton row (raises ApiError)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (a string)", "model")
    if model not in model_ids:
        raise ApiError(404, f"The model {model!r} does not exist; served: {sorted(model_ids)}", "model",
                       "model_not_found")
    if "messages" not in body:
        raise ApiError(400, "messages is required", "messages")
    if not isinstance(body["messages"], list):
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    try:
        messages = parse_messages(body["messages"])
    except RequestError as e:
        raise ApiError(400, str(e), "messages") from None
    stream, ignore_eos, stop = _bool(body, "stream"), _bool(body, "ignore_eos"), _stop(body)
    for key, used in (("stream", stream), ("stop", stop), ("ignore_eos", ignore_eos)):
        if used and engine not in STREAMING_ENGINES:
            raise ApiError(400, f"{key} is not supported by the {engine!r} engine (serve.repository.engine: vllm "
                                "supports it)", key)
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise ApiError(400, "stream_options needs stream=true and must be an object", "stream_options")
    n = _int(body, "n")
    if n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", "n")
    max_tokens = _int(body, "max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _int(body, "max_tokens"), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"{key} must be at least 1, got {max_tokens}", key)
    seed = _int(body, "seed")
    if seed is not None and not (-(2**63) <= seed < 2**63):
        raise ApiError(400, "seed must fit in 64 bits", "seed")
    return {
        "model": model_ids[model],
        "messages": messages,
        "max_tokens": max_tokens or 0,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "seed": seed,
        "stop": stop,
        "stream": stream,
        "ignore_eos": ignore_eos,
        "include_usage": bool((options or {}).get("include_usage")),
    }


def _utf8(text: str) -> list[int]:
    """Text as the models' UINT8 tensors carry it (see backend_model.request_row)."""
    return list(text.encode("utf-8"))


def triton_generate_body(row: dict) -> dict:
    """Triton generate-extension JSON for the decoupled vLLM model (one row, inputs by name)."""
    body = {
        "messages": _utf8(json.dumps(row["messages"], ensure_ascii=False)),
        "model": _utf8(row["model"]),
        "max_tokens": int(row["max_tokens"]),
        "temperature": float(row["temperature"]),
        "top_p": float(row["top_p"]),
        "stream": bool(row.get("stream")),
        "ignore_eos": bool(row.get("ignore_eos")),
    }
    if row.get("seed") is not None:
        body["seed"] = int(row["seed"])
    if row.get("stop"):
        body["stop"] = _utf8(json.dumps(row["stop"], ensure_ascii=False))
    return body


def triton_infer_body(row: dict) -> dict:
    """Triton KServe-v2 JSON request of the hf model: one row (batch dimension 1), text as UINT8."""
    def t(name, dtype, data):
        return {"name": name, "shape": [1, len(data)], "datatype": dtype, "data": data}

    inputs = [
        t("messages", "UINT8", _utf8(json.dumps(row["messages"], ensure_ascii=False))),
        t("model", "UINT8", _utf8(row["model"])),
        t("max_tokens", "INT32", [int(row["max_tokens"])]),
        t("temperature", "FP32", [float(row["temperature"])]),
        t("top_p", "FP32", [float(row["top_p"])]),
    ]
    if row.get("seed") is not None:
        inputs.append(t("seed", "INT64", [int(row["seed"])]))
    return {"inputs": inputs}


class OpenAIServer:
    """The front end in a background thread: ``with OpenAIServer(triton_url, model, ids) as api: api.base_url``."""

    def __init__(self, triton_url: str, triton_model: str, model_ids: dict[str, str], *, host: str = "127.0.0.1",
                 port: int = 0, timeout: float = 3600.0, access_log=None, engine: str = "hf"):
        if not model_ids:
            raise ValueError("model_ids must name at least one model")
        self.engine = engine
        self.triton_url, self.triton_model = triton_url.rstrip("/"), triton_model
        self.model_ids = dict(model_ids)
        self.timeout = timeout
        self.created = int(time.time())
        self._log_lock = threading.Lock()
        self._access = open(access_log, "a", buffering=1, encoding="utf-8") if access_log else None
        self.httpd = _Server((host, port), _make_handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return f"{self.url}/v1"

    def start(self) -> "OpenAIServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="openai-api", daemon=True)
        self._thread.start()
        log.info("OpenAI front end at %s -> Triton %s model %s", self.base_url, self.triton_url, self.triton_model)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()
        if self._access is not None:
            self._access.close()
            self._access = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def access(self, line: str) -> None:
        if self._access is not None:
            with self._log_lock:
                self._access.write(f"{time.strftime('%F %T')} {line}\n")

    # -------------------------------------------------------------------- endpoints
    def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": self.created, "owned_by": "reasonflow"} for m in self.model_ids]}

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.triton_url}/v2/health/ready", timeout=5) as r:
                ok = r.status == 200
        except (OSError, urllib.error.HTTPError):
            ok = False
        return (200, {"status": "ok"}) if ok else (503, {"status": "triton not ready"})

    def parse(self, body) -> dict:
        return parse_chat_request(body, self.model_ids, self.engine)

    def chat(self, body, row: dict | None = None) -> dict:
        row = row or self.parse(body)
        out = self.infer(row)
        prompt, completion = int(out["prompt_tokens"]), int(out["completion_tokens"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": out["text"]},
                "finish_reason": out["finish_reason"],
                "logprobs": None,
            }],
            "usage": _usage(prompt, completion),
        }

    def chat_stream(self, body, row: dict):
        """Yield the OpenAI ``chat.completion.chunk`` objects of a streamed answer (vLLM engine)."""
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish=None, usage=None, choices=True) -> dict:
            out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body["model"],
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                   if choices else []}
            if usage is not None:
                out["usage"] = usage
            return out

        events = self._triton(row, stream=True)
        first = next(events, {})  # a rejected request fails here, before any event is sent
        yield chunk({"role": "assistant", "content": ""})
        last = {}
        for event in itertools.chain([first], events):
            last = event
            if event.get("text"):
                yield chunk({"content": event["text"]})
        if not last.get("finish_reason"):
            raise ApiError(502, "Triton's stream ended without a final response", code="upstream_error")
        yield chunk({}, last["finish_reason"])
        if row.get("include_usage"):
            yield chunk({}, usage=_usage(int(last["prompt_tokens"]), int(last["completion_tokens"])), choices=False)

    def infer(self, row: dict) -> dict:
        """One Triton request; returns {output name: value}. Backend INVALID_ARG -> ApiError 400."""
        return next(iter(self._triton(row, stream=False)))

    def _triton(self, row: dict, stream: bool):
        """The Triton responses of one row: ``/infer`` (hf), ``/generate`` or ``/generate_stream`` (vllm)."""
        model_url = f"{self.triton_url}/v2/models/{self.triton_model}"
        if self.engine == "hf":
            url, data = f"{model_url}/infer", triton_infer_body(row)
        else:
            url, data = f"{model_url}/generate{'_stream' if stream else ''}", triton_generate_body(row)
        req = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                if stream:
                    for line in r:  # server-sent events: "data: {...}" lines
                        if line.startswith(b"data:"):
                            event = json.loads(line[5:])
                            if "error" in event:
                                raise _backend_error(400 if "INVALID_ARG" in str(event) else 502,
                                                     str(event["error"]))
                            yield _decoded(event)
                    return
                payload = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            text = raw.decode("utf-8", "replace").strip()
            if text.startswith("data:"):  # generate_stream answers a rejected request with one SSE event
                text = text[5:].strip()
            try:
                msg = json.loads(text).get("error", "")
            except (ValueError, AttributeError):
                msg = text
            raise _backend_error(e.code, msg) from None
        except (OSError, ValueError) as e:
            raise ApiError(503, f"Triton unreachable: {e}", code="upstream_unavailable") from None
        if self.engine == "hf":  # /infer: a list of output tensors, each [1, n]
            yield _decoded({o["name"]: o["data"] if o["datatype"] == "UINT8" else o["data"][0]
                            for o in payload["outputs"]})
        else:
            yield _decoded(payload)


def _decoded(response: dict) -> dict:
    """A generate-endpoint response with the UINT8 text outputs turned back into strings."""
    out = dict(response)
    for key in ("text", "finish_reason"):
        v = out.get(key)
        if isinstance(v, list):
            out[key] = bytes(v).decode("utf-8", "replace")
        elif isinstance(v, int):  # a one-byte tensor may come back as a bare number
            out[key] = bytes([v]).decode("utf-8", "replace")
    return out


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _backend_error(status: int, msg: str) -> ApiError:
    if status == 400:  # the backend's RequestError: "<param>: message"
        param = msg.split(":", 1)[0] if ":" in msg else None
        return ApiError(400, msg, param if param in PARAMS else None)
    return ApiError(502, f"Triton answered HTTP {status}: {msg}", code="upstream_error")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # socketserver's default backlog of 5 drops bursts of concurrent clients


def _make_handler(app: OpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "reasonflow-openai/1"

        def log_message(self, fmt, *args):  # access log instead of stderr
            app.access(f"{self.address_string()} {fmt % args}")

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, err: ApiError) -> None:
            self._send(err.status, err.body())

        def _stream(self, chunks) -> None:
            """Server-sent events; the first chunk is fetched first, so an early error is a plain 4xx/5xx."""
            first = next(chunks)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def event(obj) -> None:
                self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n")
                self.wfile.flush()

            try:
                event(first)
                for c in chunks:
                    event(c)
            except ApiError as e:  # mid-stream: OpenAI's clients raise on an "error" event
                event(e.body())
            except (BrokenPipeError, ConnectionResetError):
                chunks.close()  # the client left: closing the upstream stream cancels the request
                return
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _read_json(self):
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raise ApiError(411, "chunked bodies are not supported: send Content-Length")
            if length is None:
                raise ApiError(411, "Content-Length required")
            try:
                n = int(length)
            except ValueError:
                raise ApiError(400, "bad Content-Length") from None
            if n < 0 or n > MAX_BODY:
                self.close_connection = True
                raise ApiError(413, f"body larger than {MAX_BODY} bytes")
            raw = self.rfile.read(n)
            try:
                return json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ApiError(400, f"We could not parse the JSON body of your request ({e})") from None

        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/v1/models":
                return self._send(200, app.models())
            if path.startswith("/v1/models/"):
                mid = path[len("/v1/models/"):]
                for m in app.models()["data"]:
                    if m["id"] == mid:
                        return self._send(200, m)
                return self._error(ApiError(404, f"The model {mid!r} does not exist", "model", "model_not_found"))
            if path in ("/health", "/v1/health"):
                return self._send(*app.health())
            self._error(ApiError(404, f"no route GET {path}", code="not_found"))

        def do_POST(self):  # noqa: N802
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                if path != "/v1/chat/completions":
                    # drain the body so the connection stays usable
                    self.rfile.read(min(int(self.headers.get("Content-Length") or 0), MAX_BODY))
                    raise ApiError(404, f"no route POST {path}", code="not_found")
                body = self._read_json()
                row = app.parse(body)
                if row["stream"]:
                    return self._stream(app.chat_stream(body, row))
                self._send(200, app.chat(body, row))
            except ApiError as e:
                self._error(e)
            except Exception as e:  # noqa: BLE001 - keep serving
                log.exception("chat completion failed")
                self._error(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

        def _method_not_allowed(self):
            self._error(ApiError(405, f"method {self.command} not allowed", code="method_not_allowed"))

        do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815

    return Handler
