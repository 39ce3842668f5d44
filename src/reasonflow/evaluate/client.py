"""Concurrent, retrying, resumable client for an OpenAI-compatible ``/v1/chat/completions``.

* One request per (item, repeat); requests run on a ``ThreadPoolExecutor`` of ``concurrency``
  threads, each with its own ``requests.Session`` (keep-alive).
* Sampling: ``temperature``/``top_p``/``max_tokens`` from :class:`Sampling`; ``seed`` is a stable
  function of (base seed, item id, repeat) so repeat ``r`` of an item always asks with the same
  seed. ``temperature == 0`` is greedy (``top_p`` is then sent as 1).
* Retries with exponential backoff (``backoff * 2**attempt`` s, capped, with jitter) on transport
  errors (connection refused/reset, timeouts, truncated bodies), 5xx answers and unreadable
  JSON bodies; never on 4xx, which raise :class:`RequestRejected` at once.
* Resumable cache: an append-only JSONL, one line per finished (item, repeat), flushed and
  fsynced as soon as the answer arrives. Each line carries ``key`` = sha256 of the exact request
  payload, so a cache written with other settings (model, mode, prompt, sampling, question
  text) is never reused; a line torn by a kill mid-write is ignored (and its request asked again). A
  killed run restarted on the same cache asks only for what is missing.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from .prompts import messages

log = logging.getLogger(__name__)


class RequestRejected(RuntimeError):
    """The server answered 4xx: the request itself is wrong (not retried)."""


class TransportError(RuntimeError):
    """No usable answer after all retries (transport errors, 5xx, unreadable bodies)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0  # base seed; the request seed also depends on item id and repeat
    ignore_eos: bool = False  # vLLM engine: always generate max_tokens (throughput benchmarks only)

    @classmethod
    def from_config(cls, cfg: dict | None) -> Sampling:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sampling settings {sorted(unknown)}")
        return cls(**cfg)


def request_seed(base_seed: int, item_id: str, repeat: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{item_id}:{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def build_payload(item: dict, repeat: int, *, model: str, mode: str, prompt_id: str, sampling: Sampling) -> dict:
    greedy = sampling.temperature == 0
    return {
        "model": model,
        "messages": messages(item, mode, prompt_id),
        "max_tokens": int(sampling.max_tokens),
        "temperature": float(sampling.temperature),
        "top_p": 1.0 if greedy else float(sampling.top_p),
        "seed": request_seed(sampling.seed, item["id"], repeat),
        "stream": False,
        **({"ignore_eos": True} if sampling.ignore_eos else {}),  # absent by default: cache keys unchanged
    }


def payload_key(payload: dict, salt: str = "") -> str:
    """Cache key: the exact request plus ``salt`` (e.g. a fingerprint of the served weights)."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False) + "\0" + salt
    return hashlib.sha256(blob.encode()).hexdigest()


def chat_url(base_url: str) -> str:
    """``.../v1/chat/completions`` for a base URL given with or without ``/v1``."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class ChatClient:
    """Posts chat-completion payloads with retries; thread-safe (one session per thread)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 900.0,
        retries: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        jitter: bool = True,
        api_key: str | None = None,
        pool_size: int = 64,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = chat_url(base_url)
        self.timeout, self.retries, self.backoff, self.backoff_max = timeout, retries, backoff, backoff_max
        self.jitter, self.sleep, self.pool_size = jitter, sleep, pool_size
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=self.pool_size)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            self._local.session = s
        return s

    def wait_s(self, attempt: int) -> float:
        wait = min(self.backoff_max, self.backoff * 2**attempt)
        return wait * (0.5 + random.random() / 2) if self.jitter else wait

    def complete(self, payload: dict) -> dict:
        """One chat completion: ``text``, ``reasoning``, ``finish_reason``, token counts, latency, attempts."""
        last = ""
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            try:
                resp = self._session().post(self.url, json=payload, timeout=self.timeout, headers=self.headers)
                latency = time.perf_counter() - t0
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if 400 <= resp.status_code < 500:
                    raise RequestRejected(f"HTTP {resp.status_code} from {self.url}: {resp.text[:500]}")
                if resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                else:
                    try:
                        return {**parse_completion(resp.json()), "latency_s": latency, "attempts": attempt + 1}
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        last = f"unreadable body ({type(exc).__name__}: {exc}): {resp.text[:200]}"
            if attempt < self.retries:
                wait = self.wait_s(attempt)
                log.warning("%s: %s; retry %d/%d in %.1f s", self.url, last, attempt + 1, self.retries, wait)
                self.sleep(wait)
        raise TransportError(f"{self.url}: no answer after {self.retries + 1} attempts; last error: {last}")


def parse_completion(body: dict) -> dict:
    choice = body["choices"][0]
    msg = choice.get("message") or {}
    text = msg.get("content")
    if text is None and "text" in choice:  # some servers answer chat in the completions shape
        text = choice["text"]
    if not isinstance(text, str):
        raise ValueError("no message content")
    usage = body.get("usage") or {}
    return {
        "text": text,
        "reasoning": msg.get("reasoning_content"),
        "finish_reason": choice.get("finish_reason"),
        "completion_tokens": usage.get("completion_tokens"),
        "prompt_tokens": usage.get("prompt_tokens"),
    }


# -- resumable cache ----------------------------------------------------------------------------


class ResponseCache:
    """Append-only JSONL of finished requests, looked up by (item id, repeat, payload key)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._done: dict[tuple[str, int, str], dict] = {}
        if self.path and self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.read().split("\n")
            torn = 0
            for line in lines:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self._done[(rec["id"], int(rec["repeat"]), rec["key"])] = rec
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    torn += 1  # a line torn by a killed writer (later appends start on a new line)
            if torn:
                log.warning("cache %s: ignoring %d torn/unreadable line(s); those requests are asked again", self.path, torn)
        self._fh = None

    def __len__(self) -> int:
        return len(self._done)

    def get(self, item_id: str, repeat: int, key: str) -> dict | None:
        return self._done.get((item_id, repeat, key))

    def append(self, rec: dict) -> None:
        self._done[(rec["id"], int(rec["repeat"]), rec["key"])] = rec
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+b")
            self._fh.seek(0, os.SEEK_END)
            if self._fh.tell() > 0:
                self._fh.seek(-1, os.SEEK_END)
                if self._fh.read(1) != b"\n":  # finish a torn line so the next record starts clean
                    self._fh.write(b"\n")
        self._fh.write((json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class RunStats:
    total: int  # (item, repeat) pairs
    cached: int  # found in the cache
    asked: int  # answered in this run
    errors: int  # recorded as errors (on_error="record")
    stale_cache_lines: int
    wall_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def run_items(
    items: Iterable[dict],
    client: ChatClient,
    *,
    model: str,
    mode: str,
    prompt_id: str = "reference",
    sampling: Sampling = Sampling(),
    repeats: int = 1,
    cache: str | os.PathLike | None = None,
    concurrency: int = 16,
    on_error: str = "raise",
    progress: bool = True,
    desc: str | None = None,
    cache_salt: str = "",
) -> tuple[list[dict], RunStats]:
    """Ask every (item, repeat) not already in ``cache``; return all records in (id, repeat) order.

    A record is ``{"id", "repeat", "key", "seed", "text", "reasoning", "finish_reason",
    "completion_tokens", "prompt_tokens", "latency_s", "attempts", "error"}``.
    ``on_error="raise"``: the first request that fails for good (4xx, or retries exhausted) stops
    the run after the requests in flight have finished (and been cached), then re-raises; a rerun
    resumes. ``on_error="record"``: the failure is cached as a record with ``error`` set and
    empty ``text`` (it then counts as no answer). ``cache_salt`` goes into every cache key: pass
    a fingerprint of the served model so answers of other weights are never reused.
    """
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if repeats > 1 and sampling.temperature == 0:
        log.warning("repeats=%d with temperature 0 (greedy): the repeats should agree", repeats)
    t0 = time.perf_counter()
    store = ResponseCache(cache)
    items = sorted(items, key=lambda it: it["id"])
    work, results = [], {}
    for item in items:
        for r in range(repeats):
            payload = build_payload(item, r, model=model, mode=mode, prompt_id=prompt_id, sampling=sampling)
            key = payload_key(payload, cache_salt)
            hit = store.get(item["id"], r, key)
            if hit is not None:
                results[(item["id"], r)] = hit
            else:
                work.append((item["id"], r, key, payload))
    cached = len(results)
    stale = len(store) - cached
    if stale:
        log.info("cache %s: %d lines from other settings are ignored", cache, stale)
    log.info("%d requests (%d items x %d repeats): %d cached, %d to ask", len(items) * repeats, len(items), repeats, cached, len(work))

    bar = _progress(len(items) * repeats, cached, desc, progress)
    errors, failure = 0, None

    def ask(job):
        item_id, r, key, payload = job
        base = {"id": item_id, "repeat": r, "key": key, "seed": payload["seed"]}
        try:
            return {**base, **client.complete(payload), "error": None}
        except (RequestRejected, TransportError) as exc:
            if on_error == "raise":
                raise
            return {**base, "text": "", "reasoning": None, "finish_reason": None, "completion_tokens": None,
                    "prompt_tokens": None, "latency_s": None, "attempts": None, "error": str(exc)}

    pending = iter(work)
    with cf.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="eval") as pool:
        inflight = set()
        try:
            while True:
                while failure is None and len(inflight) < 2 * max(1, concurrency):
                    job = next(pending, None)
                    if job is None:
                        break
                    inflight.add(pool.submit(ask, job))
                if not inflight:
                    break
                done, inflight = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    try:
                        rec = fut.result()
                    except (RequestRejected, TransportError) as exc:
                        failure = failure or exc
                        continue
                    store.append(rec)
                    results[(rec["id"], rec["repeat"])] = rec
                    errors += rec["error"] is not None
                    bar.update(1)
        finally:
            bar.close()
            store.close()
    if failure is not None:
        raise failure
    stats = RunStats(len(items) * repeats, cached, len(work), errors, stale, time.perf_counter() - t0)
    return [results[k] for k in sorted(results)], stats


def _progress(total: int, initial: int, desc: str | None, enabled: bool):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, desc=desc, unit="q", disable=not enabled,
        mininterval=0.5 if tty else 30.0, dynamic_ncols=tty, file=sys.stderr,
    )
