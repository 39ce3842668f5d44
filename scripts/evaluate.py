"""Snakemake entry point: one (model, benchmark, mode) against an OpenAI-compatible endpoint.

The endpoint's base URL is an argument of :func:`run`. Until the serving rule is wired in,
``main`` takes it from ``params.url``; otherwise it starts the server itself with
``reasonflow.serve.serving(**params.serve)`` and evaluates inside that block.
"""

from reasonflow.evaluate.job import EvalSettings, evaluate, model_fingerprint
from reasonflow.smk import log_to


def run(smk, base_url: str) -> dict:
    p = smk.params
    model_files = list(smk.input.model) if hasattr(smk.input, "model") else []
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
        model_fingerprint=p.get("model_fingerprint") or (model_fingerprint(model_files) if model_files else ""),
    )


def main() -> None:
    log_to(snakemake.log[0])
    url = snakemake.params.get("url")
    if url:
        result = run(snakemake, url)
    else:
        from reasonflow.serve import serving  # the serving stage (Triton + OpenAI-compatible proxy)

        with serving(**snakemake.params.serve) as url:
            result = run(snakemake, url)
    print(f"accuracy {result['accuracy']:.4f}, no answer {result['no_answer_rate']:.4f}; {result['stats']}")


if __name__ == "__main__":
    main()
