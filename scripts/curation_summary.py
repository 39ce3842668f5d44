"""Snakemake entry point: sum the per-shard stats into the curation funnel."""

import json

from reasonflow.curation.summary import write_summary
from reasonflow.smk import log_to

log_to(snakemake.log[0])
summary = write_summary(list(snakemake.input.stats), snakemake.output.json, snakemake.output.funnel)
print(json.dumps(summary["total"], indent=2))
