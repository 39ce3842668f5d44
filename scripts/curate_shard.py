"""Snakemake entry point: run the NeMo Curator pipeline on one shard."""

import json

from reasonflow.curation.run import CurationSettings, curate_shard
from reasonflow.smk import log_to

log_to(snakemake.log[0])
stats = curate_shard(
    shard=snakemake.input.shard,
    info=snakemake.input.info,
    settings=CurationSettings.from_config(snakemake.params.settings),
    kept=snakemake.output.kept,
    dropped=snakemake.output.dropped,
    rejects=snakemake.output.rejects,
    stats=snakemake.output.stats,
    num_cpus=snakemake.threads,
)
print(json.dumps({k: stats[k] for k in ("rows_in", "kept", "dropped", "rejected")}))
