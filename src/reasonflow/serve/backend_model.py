"""Triton Python-backend model: one base model + PEFT LoRA adapters, chosen per request.

This file is copied verbatim to ``<repo>/<name>/1/model.py`` by
:func:`reasonflow.serve.repository.write_triton_repo` and runs inside Triton's Python-backend
stub (serving environment: torch, transformers, peft; numpy 1 or 2). It must stay self-contained:
no ``reasonflow`` imports. The generation logic lives in :class:`ChatGenerator`, which needs no
Triton, so it can also be used and tested in-process.

Tensors (one request = one row: every tensor has the batch dimension 1; text is UTF-8 bytes in
UINT8 tensors, read and written through DLPack, see ``from_triton``):

inputs
  ``messages``    UINT8  ``[1, -1]`` OpenAI-style ``[{"role": ..., "content": ...}, ...]`` as JSON
  ``model``       UINT8  ``[1, -1]`` ``base`` (adapter disabled) or the name of a loaded adapter
  ``max_tokens``  INT32  optional; <= 0 or absent: ``default_max_tokens`` (0: rest of the context)
  ``temperature`` FP32   optional (default 1.0); 0 means greedy
  ``top_p``       FP32   optional (default 1.0)
  ``seed``        INT64  optional; a seeded sampled row gives the same tokens alone or in any batch
outputs
  ``text`` UINT8, ``finish_reason`` UINT8 (``stop``/``length``), ``prompt_tokens`` INT32,
  ``completion_tokens`` INT32 (generated tokens, the end-of-turn token included when emitted)

config.pbtxt ``parameters`` (all strings): ``base_model`` (HF directory, also the tokenizer and
chat template), ``adapters`` (JSON ``{name: dir}``), ``base_name`` (default ``base``),
``dtype`` (``auto``: float32 on CPU, bfloat16 on GPU), ``num_threads`` (torch CPU threads, 0:
default), ``default_max_tokens``, ``max_model_len`` (0: ``max_position_embeddings``),
``stop_tokens`` (JSON list of extra end-of-turn token strings). Relative paths are resolved
against the model's directory in the repository.

Batching: Triton's dynamic batcher (ragged text inputs) hands ``execute`` several requests at once; their rows are
grouped by (model, greedy or sampled) and each group runs as one left-padded batched
``generate``. Greedy rows are independent of their batch mates, so a greedy answer does not
depend on what else was in the batch (up to float rounding of the padded attention). Sampled
rows (each with its own temperature, top_p and seed) are drawn by :class:`RowSampler`: every row
has its own random stream (``torch.Generator`` seeded with the row's seed, or from the global
RNG when it has none) and takes the same number of uniforms for every token it generates, so a
seeded answer does not depend on its batch mates either (same caveat: padding's rounding of the
logits can flip a sampled token where the two best Gumbel-perturbed scores nearly tie; in
bfloat16 that rounding is coarse, so long answers can diverge, as greedy ones can).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|end_of_turn|>", "<end_of_turn>")
ROLES = ("system", "developer", "user", "assistant", "tool")


class RequestError(ValueError):
    """A problem with one request (becomes INVALID_ARG, HTTP 400); ``param`` names the field."""

    def __init__(self, param: str | None, message: str):
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param


@dataclass
class Row:
    messages: list
    model: str
    max_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list = field(default_factory=list)  # stop strings (not in the text); vLLM engine
    ignore_eos: bool = False  # vLLM engine: generate max_tokens whatever is sampled (benchmarks)
    stream: bool = False  # vLLM engine: send text deltas as they come
    # filled in by ChatPrompter.prepare
    prompt_ids: list = field(default_factory=list)
    # results
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0


def parse_messages(raw) -> list[dict]:
    """Validate OpenAI-style chat messages (JSON text or list) -> list of {role, content}."""
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", errors="strict")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestError("messages", f"not valid JSON ({e})") from None
    if not isinstance(raw, list) or not raw:
        raise RequestError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError("messages", f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RequestError("messages", f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise RequestError("messages", f"messages[{i}].content: only text parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise RequestError("messages", f"messages[{i}].content must be a string")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def sample_token(logits, temperature: float, top_p: float, uniforms):
    """The token (0-d tensor) that the uniforms (one per vocabulary entry, in [0, 1)) pick from one row.

    OpenAI semantics: softmax of ``logits / temperature``, restricted to the nucleus (the fewest
    most likely tokens whose probability reaches ``top_p``; no top-k), renormalised. Drawn with
    the Gumbel-max trick: ``argmax(logits / temperature - log(-log(u)))`` over the nucleus, which
    is an exact sample of that distribution. Works on this row alone (1-D tensors, float64, on
    the logits' device), so the answer depends on its logits and uniforms only, never on the
    rows batched with it; and each uniform belongs to one token id, so a small change in the
    logits (the rounding that padding brings) changes the answer only if the two best perturbed
    scores nearly tie (an inverse CDF would add up the rounding of every token before the draw).
    """
    import torch

    x = logits.detach().to(torch.float64) / float(temperature)
    s = x - torch.log(-torch.log(uniforms))  # + Gumbel(0, 1) noise; u = 0 gives -inf: never chosen
    if top_p >= 1.0:
        return torch.argmax(s)
    w = torch.exp(x - x.max())  # unnormalised probabilities, the largest 1.0; -inf -> 0
    need = w.sum() * float(top_p)
    # The nucleus: tokens in descending order of probability (ties in index order: a stable sort)
    # while the mass before them is < top_p. On the CPU, sorting 100k+ tokens per row and step is
    # slow, so only the tokens with w >= t are sorted, for the largest t of a fixed ladder whose
    # tokens reach top_p: a threshold takes all of a tie or none, so they are exactly the first
    # entries of the full sort and the nucleus lies inside them (t = 0: all). On a GPU the full
    # sort is quick and needs no wait for the host.
    idx = None
    if w.device.type == "cpu":
        for t in (1e-3, 1e-5, 1e-8, 1e-16, 0.0):
            if t == 0.0 or bool(torch.where(w >= t, w, 0.0).sum() >= need):
                break
        if t > 0.0:
            idx = torch.nonzero(w >= t).squeeze(1)
    ws, pos = torch.sort(w if idx is None else w[idx], descending=True, stable=True)
    order = pos if idx is None else idx[pos]
    before = torch.zeros_like(ws)
    before[1:] = torch.cumsum(ws, 0)[:-1]  # the mass before each token (exclusive prefix sums)
    sn = torch.where(before < need, s[order], float("-inf"))
    return order[torch.argmax(sn)]


class RowSampler:
    """Logits processor that samples every row itself; ``generate`` then runs with ``do_sample=False``.

    Row j has its own ``torch.Generator`` (``seeds[j]``, on the scores' device) and takes one
    uniform per vocabulary entry for each token it generates; :func:`sample_token` picks the
    token from that row's logits alone. The returned scores are -inf except at the drawn token, so
    greedy selection picks it. A row past its ``max_tokens`` (or, on the CPU, past a stop token)
    draws nothing more; a GPU row that has stopped keeps drawing from its own stream (checking
    would make the host wait every step), which changes nothing: its later tokens are padding.
    """

    def __init__(self, prompt_width: int, temperatures, top_ps, seeds, max_tokens, stop_ids, pad_id: int):
        self.width = int(prompt_width)
        self.temperatures = [float(t) for t in temperatures]
        self.top_ps = [float(p) for p in top_ps]
        self.seeds = [int(s) & 0xFFFF_FFFF_FFFF_FFFF for s in seeds]
        self.max_tokens = [int(m) for m in max_tokens]
        self.stop_ids = [int(i) for i in stop_ids]
        self.pad_id = int(pad_id)
        self.generators = None  # made on the first call, on the scores' device
        self.stopped = None  # bool tensor: the row has emitted a stop token
        self.draws = [0] * len(self.seeds)  # tokens drawn per row (diagnostics, tests)

    def __call__(self, input_ids, scores):
        import torch

        device, vocab = scores.device, scores.shape[-1]
        if self.generators is None:
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
            self._stop_tensor = torch.tensor(self.stop_ids, device=input_ids.device)
            self._pad = torch.tensor(self.pad_id, device=device)
        n_generated = input_ids.shape[1] - self.width
        if n_generated > 0:
            hit = torch.isin(input_ids[:, -1], self._stop_tensor)
            self.stopped = hit if self.stopped is None else self.stopped | hit
        skip = [n_generated >= m for m in self.max_tokens]
        if self.stopped is not None and device.type == "cpu":
            skip = [a or b for a, b in zip(skip, self.stopped.tolist(), strict=True)]
        pad = self._pad
        picks = []
        for j, g in enumerate(self.generators):
            if skip[j]:
                picks.append(pad)
                continue
            self.draws[j] += 1
            u = torch.rand(vocab, generator=g, dtype=torch.float64, device=device)
            picks.append(sample_token(scores[j], self.temperatures[j], self.top_ps[j], u))
        chosen = torch.stack(picks)
        if self.stopped is not None:
            chosen = torch.where(self.stopped.to(device), pad, chosen)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class ChatPrompter:
    """The served chat template, once per request, as in training: tokenizer, context, stop tokens.

    Shared by both engines (``ChatGenerator`` here, ``VllmGenerator`` in ``vllm_model.py``):
    ``prepare`` validates a row's model and sampling values, applies the template with the
    generation prompt, tokenizes it without added special tokens (the template starts with
    BOS) and settles ``max_tokens`` against the context.
    """

    def __init__(self, base_model: str, model_names: list[str], *, context: int = 0, default_max_tokens: int = 0,
                 stop_tokens: list[str] | None = None, eos_ids=None):
        from transformers import AutoTokenizer

        if not os.path.isdir(base_model):
            raise FileNotFoundError(f"base_model directory {base_model!r} does not exist")
        self.tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{base_model}: the tokenizer has no chat template")
        self.model_names = list(model_names)
        self.context = int(context) if context and context > 0 else int(self.tokenizer.model_max_length)
        self.default_max_tokens = int(default_max_tokens or 0)
        self.stop_ids = self._stop_ids(eos_ids, stop_tokens or [])
        if not self.stop_ids:
            raise ValueError("no end-of-turn token: set the stop_tokens parameter")

    def _stop_ids(self, eos_ids, extra: list[str]) -> list[int]:
        tok = self.tokenizer
        ids: list[int] = []

        def add(x):
            if x is None:
                return
            for i in x if isinstance(x, (list, tuple)) else [x]:
                if isinstance(i, int) and i >= 0 and i not in ids:
                    ids.append(i)

        add(eos_ids)
        add(tok.eos_token_id)
        vocab = tok.get_vocab()
        for t in (*END_OF_TURN_TOKENS, *extra):
            if t in vocab:
                add(vocab[t])
            elif t in extra:
                raise ValueError(f"stop token {t!r} is not in the tokenizer's vocabulary")
        return ids

    def render(self, messages: list[dict]) -> str:
        """The served chat template applied with the generation prompt (as text)."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare(self, row: Row) -> None:
        """Template + tokenize one row and check it against the context (RequestError if bad)."""
        if row.model not in self.model_names:
            raise RequestError("model", f"unknown model {row.model!r}; served: {self.model_names}")
        if not (row.temperature >= 0 and row.temperature <= 2):
            raise RequestError("temperature", f"must be in [0, 2], got {row.temperature}")
        if not (row.top_p > 0 and row.top_p <= 1):
            raise RequestError("top_p", f"must be in (0, 1], got {row.top_p}")
        text = self.render(row.messages)
        # the template already starts with BOS: no special tokens added (as in training)
        row.prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = self.context - len(row.prompt_ids)
        if room < 1:
            raise RequestError("messages", f"the prompt has {len(row.prompt_ids)} tokens; the model's context "
                                           f"is {self.context} tokens")
        if row.max_tokens <= 0:
            row.max_tokens = min(self.default_max_tokens, room) if self.default_max_tokens > 0 else room
        elif row.max_tokens > room:
            raise RequestError("max_tokens", f"max_tokens={row.max_tokens} is more than the {room} tokens left in "
                                             f"the {self.context}-token context after the "
                                             f"{len(row.prompt_ids)}-token prompt")


class ChatGenerator(ChatPrompter):
    """Base weights loaded once; adapters attached with PEFT and switched per batch group."""

    def __init__(self, base_model: str, adapters: dict[str, str] | None = None, *, base_name: str = "base",
                 device: str = "cpu", dtype: str = "auto", num_threads: int = 0, default_max_tokens: int = 0,
                 max_model_len: int = 0, stop_tokens: list[str] | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        for what, d in [("base_model", base_model), *((f"adapter {k!r}", v) for k, v in (adapters or {}).items())]:
            if not os.path.isdir(d):
                raise FileNotFoundError(f"{what} directory {d!r} does not exist")
        if num_threads and num_threads > 0:
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.device = torch.device(device)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch_dtype, local_files_only=True)
        model.to(self.device).eval()
        self.base_name = base_name
        self.adapters = dict(adapters or {})
        if base_name in self.adapters:
            raise ValueError(f"adapter name {base_name!r} clashes with the base model's name")
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            model = PeftModel.from_pretrained(model, self.adapters[names[0]], adapter_name=names[0],
                                              is_trainable=False)
            for name in names[1:]:
                model.load_adapter(self.adapters[name], adapter_name=name, is_trainable=False)
            model.to(self.device).eval()
        self.model = model

        cfg = model.config if not self.adapters else model.get_base_model().config
        context = int(max_model_len) if max_model_len and max_model_len > 0 else int(
            getattr(cfg, "max_position_embeddings", 0) or 0)
        super().__init__(base_model, [base_name, *self.adapters], context=context,
                         default_max_tokens=default_max_tokens, stop_tokens=stop_tokens, eos_ids=eos)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]

    @staticmethod
    def group_key(i: int, row: Row):
        if row.temperature == 0:
            return (row.model, "greedy")
        # every sampled row of a model in one batch: RowSampler applies each row's temperature,
        # top_p and seed itself, so a seeded row's answer does not depend on its batch mates
        return (row.model, "sample")

    def generate(self, rows: list[Row]) -> None:
        """Fill text/finish_reason/completion_tokens of prepared rows, batched per group."""
        groups: dict = {}
        for i, row in enumerate(rows):
            groups.setdefault(self.group_key(i, row), []).append(row)
        for group in groups.values():
            self._generate_group(group)

    def _generate_group(self, group: list[Row]) -> None:
        torch = self.torch
        from transformers import GenerationConfig

        first = group[0]
        width = max(len(r.prompt_ids) for r in group)
        ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for j, r in enumerate(group):  # left padding
            ids[j, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[j, width - len(r.prompt_ids):] = 1
        greedy = first.temperature == 0
        # sampled groups are sampled by RowSampler (per-row temperature, top_p and seed: OpenAI
        # semantics, no top-k) and picked greedily from its one-hot scores, so none of the
        # model's generation_config sampling defaults (e.g. Llama's top_p=0.9) take part
        gen = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in group),
            do_sample=False,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            num_beams=1,
        )
        processors = []
        if not greedy:
            seeds = [r.seed if r.seed is not None else int(torch.randint(0, 2**63 - 1, (1,)).item()) for r in group]
            processors.append(RowSampler(width, [r.temperature for r in group], [r.top_p for r in group], seeds,
                                         [r.max_tokens for r in group], self.stop_ids, self.pad_id))
        with torch.inference_mode(), self._adapter(first.model):
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=gen, logits_processor=processors or None)
        new = out[:, width:].tolist()
        stops = set(self.stop_ids)
        for r, toks in zip(group, new, strict=True):
            toks = toks[: r.max_tokens]
            end = next((k for k, t in enumerate(toks) if t in stops), None)
            if end is None:
                r.finish_reason, r.completion_tokens, body = "length", len(toks), toks
            else:
                r.finish_reason, r.completion_tokens, body = "stop", end + 1, toks[:end]
            r.text = self.tokenizer.decode(body, skip_special_tokens=True)

    def _adapter(self, name: str):
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if name == self.base_name:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()


# ============================================================================================
# Triton glue (only imported inside the Python-backend stub; shared with vllm_model.py)
# ============================================================================================
# Every tensor goes through DLPack (torch), never ``as_numpy()``, and text is UTF-8 bytes in UINT8
# tensors, never BYTES: under numpy 2 (vLLM's images, the GPU images) the stub of the nvidia-pytriton
# wheel aborts on BYTES inputs and hands out numeric arrays that repeat their first element.
ROW_INPUTS = (("max_tokens", int), ("temperature", float), ("top_p", float), ("seed", int), ("stream", bool),
              ("ignore_eos", bool))


def from_triton(tensor):
    """A Triton tensor as a torch tensor (its own shape), through DLPack."""
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack()).cpu()


def to_triton(pb, name: str, tensor):
    """A torch tensor as a Triton output tensor, through DLPack."""
    from torch.utils.dlpack import to_dlpack

    return pb.Tensor.from_dlpack(name, to_dlpack(tensor.contiguous()))


def request_row(pb, request, batched: bool) -> Row:
    """The one row a request carries: ``messages``, ``model`` and ``stop`` (JSON) as UTF-8 in UINT8,
    every number a single value. ``batched``: the model has a batch dimension (dynamic batcher), which
    must then be 1 (one row per request)."""
    import math

    import torch

    def value(name, required=False):
        t = pb.get_input_tensor_by_name(request, name)
        if t is None:
            if required:
                raise RequestError(name, "missing input")
            return None
        x = from_triton(t)
        if batched and (x.dim() < 1 or x.shape[0] != 1):
            raise RequestError(name, f"one row per request: batch dimension must be 1, got shape {list(x.shape)}")
        flat = x.reshape(-1)
        if flat.dtype == torch.uint8:  # text: UTF-8 bytes
            try:
                return flat.numpy().tobytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(name, f"not valid UTF-8 ({e})") from None
        if flat.numel() != 1:
            raise RequestError(name, f"expected one value, got {flat.numel()}")
        return flat[0].item()

    row = Row(messages=parse_messages(value("messages", True)), model=str(value("model", True)))
    for name, cast in ROW_INPUTS:
        v = value(name)
        if v is not None:
            setattr(row, name, cast(v))
    if not math.isfinite(row.temperature) or not math.isfinite(row.top_p):
        raise RequestError("temperature", "temperature and top_p must be finite")
    stop = value("stop")
    if stop:
        try:
            stop = json.loads(stop)
        except json.JSONDecodeError as e:
            raise RequestError("stop", f"not valid JSON ({e})") from None
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
            raise RequestError("stop", "must be a string or a list of at most 16 non-empty strings")
        row.stop = stop
    return row


def response_tensors(pb, text: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int,
                     batched: bool) -> list:
    """The output tensors of one row (``text``/``finish_reason`` UTF-8 in UINT8); ``batched`` adds the
    batch dimension of 1."""
    import torch

    def shaped(t):
        return t.reshape(1, -1) if batched else t

    def utf8(name, s):
        raw = torch.frombuffer(bytearray(s.encode("utf-8")), dtype=torch.uint8) if s else torch.zeros(0, dtype=torch.uint8)
        return to_triton(pb, name, shaped(raw))

    return [
        utf8("text", text),
        utf8("finish_reason", finish_reason or ""),
        to_triton(pb, "prompt_tokens", shaped(torch.tensor([prompt_tokens], dtype=torch.int32))),
        to_triton(pb, "completion_tokens", shaped(torch.tensor([completion_tokens], dtype=torch.int32))),
    ]


def config_param(params: dict, key: str, default: str = "") -> str:
    """A string parameter of config.pbtxt (``default`` when absent or empty)."""
    value = params.get(key, {}).get("string_value", default)
    return default if value is None or value == "" else value


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        here = os.path.join(args["model_repository"])

        def path(p):
            return p if os.path.isabs(p) else os.path.normpath(os.path.join(here, p))

        adapters = {k: path(v) for k, v in json.loads(config_param(params, "adapters", "{}")).items()}
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        else:
            device = "cpu"
        self.generator = ChatGenerator(
            path(config_param(params, "base_model")),
            adapters,
            base_name=config_param(params, "base_name", "base"),
            device=device,
            dtype=config_param(params, "dtype", "auto"),
            num_threads=int(config_param(params, "num_threads", "0")),
            default_max_tokens=int(config_param(params, "default_max_tokens", "0")),
            max_model_len=int(config_param(params, "max_model_len", "0")),
            stop_tokens=json.loads(config_param(params, "stop_tokens", "[]")),
        )
        g = self.generator
        print(f"[reasonflow] {args['model_name']}: models {g.model_names} on {device}, context {g.context}, "
              f"stop ids {g.stop_ids}", flush=True)

    def _row(self, request) -> Row:
        row = request_row(self.pb, request, batched=True)
        self.generator.prepare(row)
        return row

    def execute(self, requests):
        pb = self.pb
        parsed: list = []
        for request in requests:
            try:
                parsed.append(self._row(request))
            except RequestError as e:
                parsed.append(pb.TritonError(str(e), pb.TritonError.INVALID_ARG))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail its batch mates
                parsed.append(pb.TritonError(f"{type(e).__name__}: {e}", pb.TritonError.INVALID_ARG))
        good = [r for r in parsed if isinstance(r, Row)]
        failure = None
        if good:
            try:
                self.generator.generate(good)
            except Exception as e:  # noqa: BLE001
                failure = pb.TritonError(f"generation failed: {type(e).__name__}: {e}", pb.TritonError.INTERNAL)
        responses = []
        for r in parsed:
            if not isinstance(r, Row):
                responses.append(pb.InferenceResponse(output_tensors=[], error=r))
            elif failure is not None:
                responses.append(pb.InferenceResponse(output_tensors=[], error=failure))
            else:
                responses.append(pb.InferenceResponse(output_tensors=response_tensors(
                    pb, r.text, r.finish_reason, len(r.prompt_ids), r.completion_tokens, batched=True)))
        return responses

    def finalize(self):
        self.generator = None
