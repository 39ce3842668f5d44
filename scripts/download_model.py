"""Snakemake entry point: snapshot a hub model (token from the environment, never logged)."""

from reasonflow.hub import download
from reasonflow.smk import log_to

log_to(snakemake.log[0])
path = download(snakemake.params.repo_id, snakemake.params.revision, snakemake.output[0])
print(f"downloaded {snakemake.params.repo_id}@{snakemake.params.revision} to {path}")
