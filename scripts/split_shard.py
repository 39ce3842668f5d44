"""Snakemake entry point: cut one line-aligned byte-range shard out of a raw JSONL file."""

from reasonflow.smk import log_to
from reasonflow.split import write_shard

log_to(snakemake.log[0])
info = write_shard(
    raw_path=snakemake.input.raw,
    source=f"{snakemake.wildcards.source}.jsonl",
    index=int(snakemake.wildcards.shard),
    shard_bytes=snakemake.params.shard_bytes,
    out_path=snakemake.output.shard,
    info_path=snakemake.output.info,
)
print(f"shard {info.source}#{info.index}: {info.lines} lines, {info.bytes} bytes from offset {info.first_offset}")
