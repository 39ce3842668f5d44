"""OpenAI-compatible front end over Triton (stdlib only: ``http.server`` + ``urllib``).

``POST /v1/chat/completions`` (``model``, ``messages``, ``temperature``, ``top_p``, ``max_tokens`` /
``max_completion_tokens``, ``seed``) -> one Triton inference on the Python-backend model written by
:func:`reasonflow.serve.repository.write_triton_repo`; ``GET /v1/models``; ``GET /health``.
Errors use OpenAI's format ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed
body or field (including ``max_tokens`` beyond the context, checked by the backend with the
served tokenizer), 404 for an unknown model or path, 502/503 when Triton fails. Each request is
handled in its own thread, so concurrent requests reach Triton together and its dynamic batcher
batches them.
"""

from __future__ import annotations

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
PARAMS = ("messages", "model", "max_tokens", "temperature", "top_p", "seed")


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


def parse_chat_request(body, model_ids: dict[str, str]) -> dict:
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
    if body.get("stream"):
        raise ApiError(400, "stream=true is not supported by this server", "stream")
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
    }


def triton_infer_body(row: dict) -> dict:
    """Triton KServe-v2 JSON request for one row (shape [1, 1]: batch of one)."""
    def t(name, dtype, value):
        return {"name": name, "shape": [1, 1], "datatype": dtype, "data": [value]}

    inputs = [
        t("messages", "BYTES", json.dumps(row["messages"], ensure_ascii=False)),
        t("model", "BYTES", row["model"]),
        t("max_tokens", "INT32", int(row["max_tokens"])),
        t("temperature", "FP32", float(row["temperature"])),
        t("top_p", "FP32", float(row["top_p"])),
    ]
    if row.get("seed") is not None:
        inputs.append(t("seed", "INT64", int(row["seed"])))
    return {"inputs": inputs}


class OpenAIServer:
    """The front end in a background thread: ``with OpenAIServer(triton_url, model, ids) as api: api.base_url``."""

    def __init__(self, triton_url: str, triton_model: str, model_ids: dict[str, str], *, host: str = "127.0.0.1",
                 port: int = 0, timeout: float = 3600.0, access_log=None):
        if not model_ids:
            raise ValueError("model_ids must name at least one model")
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

    def chat(self, body) -> dict:
        row = parse_chat_request(body, self.model_ids)
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
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    def infer(self, row: dict) -> dict:
        """One Triton inference; returns {output name: value}. Backend INVALID_ARG -> ApiError 400."""
        data = json.dumps(triton_infer_body(row)).encode()
        req = urllib.request.Request(
            f"{self.triton_url}/v2/models/{self.triton_model}/infer", data=data, method="POST",
            headers={"Content-Type": "application/json", "Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                payload = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                msg = json.loads(raw).get("error", "")
            except ValueError:
                msg = raw.decode("utf-8", "replace")
            if e.code == 400:  # the backend's RequestError: "<param>: message"
                param = msg.split(":", 1)[0] if ":" in msg else None
                raise ApiError(400, msg, param if param in PARAMS else None) from None
            raise ApiError(502, f"Triton answered HTTP {e.code}: {msg}", code="upstream_error") from None
        except (OSError, ValueError) as e:
            raise ApiError(503, f"Triton unreachable: {e}", code="upstream_unavailable") from None
        return {o["name"]: o["data"][0] for o in payload["outputs"]}


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
                self._send(200, app.chat(body))
            except ApiError as e:
                self._error(e)
            except Exception as e:  # noqa: BLE001 - keep serving
                log.exception("chat completion failed")
                self._error(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

        def _method_not_allowed(self):
            self._error(ApiError(405, f"method {self.command} not allowed", code="method_not_allowed"))

        do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815

    return Handler
