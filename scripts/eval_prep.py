"""Snakemake entry point: one benchmark's raw release file -> sorted items JSONL + sha256 sidecar."""

from reasonflow.evaluate.prep import DEFAULT_SEED, prepare
from reasonflow.smk import log_to

log_to(snakemake.log[0])
p = snakemake.params
side = prepare(
    p.benchmark,
    p.source,
    snakemake.output.jsonl,
    snakemake.output.meta,
    sha256=p.get("sha256") or None,
    subjects=p.get("subjects", "stem"),
    seed=int(p.get("seed", DEFAULT_SEED)),
    cache_dir=p.get("cache_dir", "resources/eval/downloads"),
)
print(f"{p.benchmark}: {side['n']} items from {side['source']['name']} (source sha256 {side['source']['sha256']})")
print(f"items sha256 {side['sha256']}; answer letters {side['answer_letters']}")
