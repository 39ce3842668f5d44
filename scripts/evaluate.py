"""Snakemake entry point: one (model, benchmark, mode) against an OpenAI-compatible endpoint.

input:  jsonl, meta (from eval_prep); triton (the deploy rule's Triton repository root) unless
        params.url is given; optional model (weights whose change must invalidate the cache)
output: csv (per-item results), run (JSON: settings, counts, throughput)
params: model (label: base | adapter), served_model (OpenAI model id: base | lora), benchmark, mode
        (on | off), settings (EvalSettings keys + temperature/top_p/max_tokens/seed), cache (the
        resumable JSONL; NOT an output, so it survives a failed job), optional url (an endpoint
        already running: then nothing is started), optional serve (kwargs of
        reasonflow.serve.serving, e.g. serve_venv, ready_timeout, launcher, image; log_dir)

The endpoint's base URL is an argument of :func:`run`; ``main`` gets it from ``params.url`` or by
starting Triton + the OpenAI front end on ``input.triton`` for the duration of the job.
"""

from pathlib import Path

from reasonflow.evaluate.job import EvalSettings, evaluate, model_fingerprint
from reasonflow.smk import log_to


def run(smk, base_url: str) -> dict:
    p = smk.params
    weights = [str(x) for key in ("model", "triton") if hasattr(smk.input, key) for x in _as_list(getattr(smk.input, key))]
    return evaluate(
        base_url,
        smk.input.jsonl,
        smk.input.meta,
        smk.output.csv,
        model_label=p.model,
        served_model=p.get("served_model") or p.model,
        benchmark=p.benchmark,
        mode=p.mode,
        settings=EvalSettings.from_config(p.settings),
        cache_path=p.cache,
        out_run_json=smk.output.get("run"),
        model_fingerprint=p.get("model_fingerprint") or (model_fingerprint(weights) if weights else ""),
    )


def _as_list(x):
    return [x] if isinstance(x, str) else list(x)


def main() -> None:
    log_to(snakemake.log[0])
    url = snakemake.params.get("url")
    if url:
        result = run(snakemake, url)
    else:
        from reasonflow.serve import serving  # Triton + the OpenAI-compatible front end

        serve = dict(snakemake.params.get("serve") or {})
        log_dir = serve.pop("log_dir", None) or str(Path(snakemake.log[0]).with_suffix("")) + "_serve"
        with serving(snakemake.input.triton, log_dir, **serve) as url:
            result = run(snakemake, url)
    print(f"accuracy {result['accuracy']:.4f}, no answer {result['no_answer_rate']:.4f}; {result['stats']}")


if __name__ == "__main__":
    main()
