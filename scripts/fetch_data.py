"""Snakemake entry point: fetch the data.file_filter selection of data.source into data.raw_dir.

The HF token comes from the environment (HF_TOKEN / HUGGING_FACE_HUB_TOKEN), never from params.
"""

from reasonflow.data_fetch import fetch, write_manifest
from reasonflow.smk import log_to

log_to(snakemake.log[0])
p = snakemake.params
manifest = fetch(p.repo, p.revision, p.file_filter, p.raw_dir)
write_manifest(manifest, snakemake.output.manifest, snakemake.output.table)
print(f"manifest: {len(manifest['files'])} files of {p.repo}@{manifest['commit']}")
