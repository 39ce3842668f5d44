"""Triton model repositories for the trained model: Python-backend (served here) and vLLM-backend.

``write_triton_repo`` writes, for ``engine="vllm"`` (default)::

    <out>/<name>/config.pbtxt      backend "python", decoupled, one row per request, paths as parameters
    <out>/<name>/1/model.py        reasonflow/serve/vllm_model.py, verbatim (vLLM's AsyncLLM in-process)
    <out>/<name>/1/backend_model.py  reasonflow/serve/backend_model.py (request parsing, chat template)
    <out>/<name>/serving.json      what the OpenAI front end needs (Triton model, engine, served model ids)

and for ``engine="hf"`` (the fallback: HF ``generate``, dynamic batching)::

    <out>/<name>/config.pbtxt      backend "python", dynamic batching, tensors, paths as parameters
    <out>/<name>/1/model.py        reasonflow/serve/backend_model.py, verbatim
    <out>/<name>/serving.json

``write_vllm_repo`` writes the same model for Triton's vLLM backend (GPU only, not run here)::

    <out>/<name>/config.pbtxt      backend "vllm", KIND_MODEL
    <out>/<name>/1/model.json      vLLM engine arguments: model path, LoRA enabled, max rank
    <out>/<name>/1/multi_lora.json {lora name: adapter dir}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODEL_PY = Path(__file__).with_name("backend_model.py")
VLLM_MODEL_PY = Path(__file__).with_name("vllm_model.py")
SERVING_JSON = "serving.json"
ENGINES = ("vllm", "hf")

# Text travels as UTF-8 bytes in UINT8 tensors, not BYTES, in both models: the Python-backend stub of
# the nvidia-pytriton wheel garbles BYTES tensors under numpy 2 (which vLLM's and the GPU images have);
# numeric tensors are read through DLPack, safe under both numpy lines. (name, type, optional, dims)
VLLM_INPUTS = [
    ("messages", "TYPE_UINT8", False, -1),  # JSON, UTF-8
    ("model", "TYPE_UINT8", False, -1),
    ("max_tokens", "TYPE_INT32", True, 1),
    ("temperature", "TYPE_FP32", True, 1),
    ("top_p", "TYPE_FP32", True, 1),
    ("seed", "TYPE_INT64", True, 1),
    ("stop", "TYPE_UINT8", True, -1),  # JSON list of stop strings, UTF-8
    ("stream", "TYPE_BOOL", True, 1),
    ("ignore_eos", "TYPE_BOOL", True, 1),
]
OUTPUTS = [
    ("text", "TYPE_UINT8", False, -1),
    ("finish_reason", "TYPE_UINT8", False, -1),
    ("prompt_tokens", "TYPE_INT32", False, 1),
    ("completion_tokens", "TYPE_INT32", False, 1),
]
# the hf model: the same tensors less the vLLM-only ones, behind the dynamic batcher (a batch
# dimension of one row per request; text inputs of any length batch together: ragged)
INPUTS = [spec for spec in VLLM_INPUTS if spec[0] not in ("stop", "stream", "ignore_eos")]


def _q(s: str) -> str:
    """A protobuf text-format string literal."""
    return json.dumps(str(s))  # JSON escaping is valid text-format escaping for these strings


def _check_dir(path, what: str, must_have: str) -> str:
    p = Path(path)
    if not (p / must_have).is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} has no {must_have}")
    return str(p.resolve())


def _adapters(adapter_dir, adapter_name: str, adapters: dict | None) -> dict[str, str]:
    out = {}
    if adapter_dir is not None:
        out[adapter_name] = adapter_dir
    out.update(adapters or {})
    return {k: _check_dir(v, f"adapter {k!r}", "adapter_config.json") for k, v in out.items()}


def _new_model_dir(out_dir, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad Triton model name {name!r}")
    model_dir = Path(out_dir) / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    return model_dir


def triton_config(name: str, *, base_model: str, adapters: dict[str, str], base_name: str = "base",
                  max_batch_size: int = 16, preferred_batch_sizes: list[int] | None = None,
                  max_queue_delay_us: int = 20_000, instance_kind: str = "KIND_CPU", instance_count: int = 1,
                  gpus: list[int] | None = None, dtype: str = "auto", num_threads: int = 0,
                  default_max_tokens: int = 0, max_model_len: int = 0,
                  stop_tokens: list[str] | None = None) -> str:
    """The config.pbtxt text of the Python-backend model."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    if instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"instance_kind must be KIND_CPU or KIND_GPU, got {instance_kind!r}")
    if preferred_batch_sizes is None:
        preferred_batch_sizes = sorted({b for b in (4, 8, max_batch_size) if b <= max_batch_size})
    if any(b < 1 or b > max_batch_size for b in preferred_batch_sizes):
        raise ValueError(f"preferred_batch_sizes {preferred_batch_sizes} must lie in [1, {max_batch_size}]")
    lines = [
        f"name: {_q(name)}",
        'backend: "python"',
        f"max_batch_size: {int(max_batch_size)}",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(int(b)) for b in preferred_batch_sizes)} ]",
        f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "}",
        *_tensors("input", INPUTS, ragged=True),
        *_tensors("output", OUTPUTS),
        "instance_group [",
        f"  {{ count: {int(instance_count)} kind: {instance_kind}"
        + (f" gpus: [ {', '.join(str(int(g)) for g in gpus)} ]" if gpus and instance_kind == "KIND_GPU" else "")
        + " }",
        "]",
    ]
    params = {
        "base_model": base_model,
        "adapters": json.dumps(adapters, sort_keys=True),
        "base_name": base_name,
        "dtype": dtype,
        "num_threads": str(int(num_threads)),
        "default_max_tokens": str(int(default_max_tokens)),
        "max_model_len": str(int(max_model_len)),
        "stop_tokens": json.dumps(list(stop_tokens or [])),
    }
    return "\n".join(lines + _parameters(params)) + "\n"


def _tensors(kind: str, specs, ragged: bool = False) -> list[str]:
    """``(name, type, optional, dims)`` -> a config.pbtxt input/output list; ``ragged``: variable-length
    inputs (dims -1) may be batched together (``allow_ragged_batch``)."""
    rows = []
    for name, dtype, optional, dims in specs:
        extra = (" optional: true" if optional else "") + (" allow_ragged_batch: true" if ragged and dims == -1 else "")
        rows.append(f"  {{ name: {_q(name)} data_type: {dtype} dims: [ {dims} ]{extra} }}")
    return [f"{kind} [", ",\n".join(rows), "]"]


def _parameters(params: dict) -> list[str]:
    return [f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in params.items()]


def vllm_triton_config(name: str, *, base_model: str, adapters: dict[str, str], engine_args: dict,
                       base_name: str = "base", default_max_tokens: int = 0,
                       stop_tokens: list[str] | None = None, env: dict | None = None) -> str:
    """The config.pbtxt text of the decoupled vLLM model (one row per request; vLLM batches)."""
    lines = [
        f"name: {_q(name)}",
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        *_tensors("input", VLLM_INPUTS),
        *_tensors("output", OUTPUTS),
        # vLLM places the model on the GPU(s) itself; one engine per server
        "instance_group [ { count: 1 kind: KIND_MODEL } ]",
        *_parameters({
            "base_model": base_model,
            "adapters": json.dumps(adapters, sort_keys=True),
            "base_name": base_name,
            "default_max_tokens": str(int(default_max_tokens)),
            "stop_tokens": json.dumps(list(stop_tokens or [])),
            "engine_args": json.dumps(engine_args, sort_keys=True),
            "env": json.dumps({k: str(v) for k, v in (env or {}).items()}, sort_keys=True),
        }),
    ]
    return "\n".join(lines) + "\n"


def write_triton_repo(base_dir, adapter_dir, out_dir, name: str = "reasonflow", *, engine: str = "hf",
                      max_batch_size: int = 16, max_queue_delay_us: int = 20_000,
                      preferred_batch_sizes: list[int] | None = None, instance_kind: str = "KIND_CPU",
                      instance_count: int = 1, gpus: list[int] | None = None, dtype: str = "auto",
                      num_threads: int = 0, default_max_tokens: int = 0, max_model_len: int = 0,
                      stop_tokens: list[str] | None = None, base_name: str = "base", adapter_name: str = "lora",
                      adapters: dict | None = None, model_ids: dict[str, str] | None = None,
                      vllm: dict | None = None) -> Path:
    """Write the Python-backend model repository; returns ``<out>/<name>``.

    ``engine``: ``vllm`` (vLLM's async engine in the stub, decoupled; ``vllm`` holds the engine
    settings of :func:`vllm_engine_args`; ``max_batch_size`` and the other batching keys do not
    apply) or ``hf`` (HF ``generate`` with Triton's dynamic batcher). ``adapter_dir`` is served
    as ``adapter_name`` (more via ``adapters={name: dir}``); the base model (adapter disabled)
    as ``base_name``. ``model_ids`` maps the OpenAI model ids the front end shows to those
    names (default: each name as its own id).
    """
    if engine not in ENGINES:
        raise ValueError(f"serve engine must be one of {ENGINES}, got {engine!r}")
    base = _check_dir(base_dir, "base model", "config.json")
    adapter_map = _adapters(adapter_dir, adapter_name, adapters)
    names = [base_name, *adapter_map]
    model_ids = dict(model_ids or {n: n for n in names})
    unknown = {k: v for k, v in model_ids.items() if v not in names}
    if unknown:
        raise ValueError(f"model_ids {unknown} point at no served model (served: {names})")
    if engine == "vllm":
        vllm = dict(vllm or {})
        env = vllm.pop("env", None)
        args = vllm_engine_args(base, adapter_map, **{"max_model_len": max_model_len or None, **vllm})
        text = vllm_triton_config(name, base_model=base, adapters=adapter_map, engine_args=args,
                                  base_name=base_name, default_max_tokens=default_max_tokens,
                                  stop_tokens=stop_tokens, env=env)
    else:
        text = triton_config(
            name, base_model=base, adapters=adapter_map, base_name=base_name, max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
            instance_kind=instance_kind, instance_count=instance_count, gpus=gpus, dtype=dtype,
            num_threads=num_threads, default_max_tokens=default_max_tokens, max_model_len=max_model_len,
            stop_tokens=stop_tokens,
        )
    model_dir = _new_model_dir(out_dir, name)
    (model_dir / "config.pbtxt").write_text(text)
    if engine == "vllm":
        shutil.copyfile(VLLM_MODEL_PY, model_dir / "1" / "model.py")
        shutil.copyfile(MODEL_PY, model_dir / "1" / MODEL_PY.name)
    else:
        shutil.copyfile(MODEL_PY, model_dir / "1" / "model.py")
    (model_dir / SERVING_JSON).write_text(json.dumps(
        {"triton_model": name, "engine": engine, "model_ids": model_ids, "base_model": base,
         "adapters": adapter_map}, indent=2) + "\n")
    return model_dir


def read_serving_info(repo_dir, triton_model: str | None = None) -> dict:
    """``serving.json`` of the (only, or named) model in a repository written by write_triton_repo."""
    repo = Path(repo_dir)
    if triton_model is None:
        found = sorted(p.parent.name for p in repo.glob(f"*/{SERVING_JSON}"))
        if len(found) != 1:
            raise ValueError(f"{repo}: expected one model written by write_triton_repo, found {found}; "
                             "name it with triton_model=")
        triton_model = found[0]
    path = repo / triton_model / SERVING_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: write the repository with write_triton_repo")
    return json.loads(path.read_text())


VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_engine_args(base: str, adapter_map: dict[str, str], *, max_lora_rank: int | None = None,
                     max_loras: int | None = None, max_model_len: int | None = None,
                     gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1, dtype: str = "auto",
                     enforce_eager: bool = False, engine_args: dict | None = None) -> dict:
    """vLLM engine arguments for the base model and its adapters (served unmerged, as LoRA requests).

    ``max_lora_rank`` defaults to the largest adapter rank, rounded up to a rank vLLM accepts;
    ``engine_args`` adds or overrides any other ``AsyncEngineArgs`` field (e.g. ``max_num_seqs``).
    """
    engine = {
        "model": base,
        "tokenizer": base,
        "dtype": dtype,
        "gpu_memory_utilization": float(gpu_memory_utilization),
        "tensor_parallel_size": int(tensor_parallel_size),
        "enforce_eager": bool(enforce_eager),
    }
    if adapter_map:
        ranks = []
        for d in adapter_map.values():
            cfg = json.loads((Path(d) / "adapter_config.json").read_text())
            ranks.append(max([int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())]))
        need = max(ranks)
        if max_lora_rank is None:
            max_lora_rank = next((r for r in VLLM_RANKS if r >= need), need)
        if max_lora_rank < need:
            raise ValueError(f"max_lora_rank={max_lora_rank} is below the adapters' rank {need}")
        engine.update(enable_lora=True, max_lora_rank=int(max_lora_rank), max_loras=int(max_loras or len(adapter_map)))
    if max_model_len:
        engine["max_model_len"] = int(max_model_len)
    engine.update(engine_args or {})
    return engine


def write_vllm_repo(base_dir, adapter_dir, out_dir, name: str = "reasonflow_vllm", *, adapter_name: str = "lora",
                    adapters: dict | None = None, **vllm) -> Path:
    """Write the variant for Triton's own vLLM backend (its container on clusters); returns ``<out>/<name>``.

    LoRA enabled, adapters in ``multi_lora.json``; ``vllm`` are :func:`vllm_engine_args`'s keys.
    Clients pick the adapter with the request parameter ``"lora_name": "<adapter_name>"`` (none:
    the base model).
    """
    base = _check_dir(base_dir, "base model", "config.json")
    adapter_map = _adapters(adapter_dir, adapter_name, adapters)
    if not adapter_map:
        raise ValueError("write_vllm_repo needs at least one adapter")
    engine = vllm_engine_args(base, adapter_map, **vllm)
    model_dir = _new_model_dir(out_dir, name)
    (model_dir / "config.pbtxt").write_text(
        f"name: {_q(name)}\nbackend: \"vllm\"\ninstance_group [\n  {{ count: 1 kind: KIND_MODEL }}\n]\n")
    (model_dir / "1" / "model.json").write_text(json.dumps(engine, indent=2) + "\n")
    (model_dir / "1" / "multi_lora.json").write_text(json.dumps(adapter_map, indent=2) + "\n")
    return model_dir


TRITON_KEYS = ("name", "engine", "max_batch_size", "max_queue_delay_us", "preferred_batch_sizes", "instance_kind",
               "instance_count", "gpus", "dtype", "num_threads", "default_max_tokens", "max_model_len",
               "stop_tokens", "base_name", "adapter_name", "model_ids")
VLLM_KEYS = ("name", "max_lora_rank", "max_loras", "max_model_len", "gpu_memory_utilization",
             "tensor_parallel_size", "dtype", "enforce_eager", "engine_args", "env")


def deploy(base_dir, adapter_dir, triton_out, vllm_out=None, settings: dict | None = None) -> dict:
    """Write both repositories from one settings dict (the ``deploy`` rule's params).

    Top-level keys go to :func:`write_triton_repo` (``TRITON_KEYS``; ``engine`` picks vllm or hf);
    ``settings["vllm"]`` holds the vLLM engine settings (``VLLM_KEYS``), used by the ``vllm``
    engine and by the Triton-vLLM-backend variant (``adapter_name`` and ``max_model_len`` are
    shared). Unknown keys are an error. Returns ``{"triton": dir, "vllm": dir}``.
    """
    settings = dict(settings or {})
    vllm = dict(settings.pop("vllm", None) or {})
    unknown = sorted(set(settings) - set(TRITON_KEYS)) + [f"vllm.{k}" for k in sorted(set(vllm) - set(VLLM_KEYS))]
    if unknown:
        raise ValueError(f"unknown serving settings {unknown}; allowed: {TRITON_KEYS} and vllm: {VLLM_KEYS}")
    if settings.get("max_model_len"):
        vllm.setdefault("max_model_len", settings["max_model_len"])
    variant_name = vllm.pop("name", None) or f"{settings.get('name', 'reasonflow')}_vllm"
    out = {"triton": write_triton_repo(base_dir, adapter_dir, triton_out, **settings, vllm=vllm)}
    if vllm_out is not None:
        variant = {k: v for k, v in vllm.items() if k != "env"}  # the engine's environment: our model only
        out["vllm"] = write_vllm_repo(base_dir, adapter_dir, vllm_out, name=variant_name,
                                      adapter_name=settings.get("adapter_name", "lora"), **variant)
    return out
