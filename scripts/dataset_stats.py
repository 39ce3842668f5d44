"""Snakemake entry point: dataset statistics and plots (dask)."""

from pathlib import Path

from reasonflow.merge.run import local_cluster
from reasonflow.merge.stats import write_all
from reasonflow.smk import log_to


def main() -> None:
    log_to(snakemake.log[0])
    with local_cluster(snakemake.threads):
        summary = write_all(
            list(snakemake.input.shard_stats),
            snakemake.input.merge_stats,
            snakemake.input.training,
            snakemake.params.max_tokens,
            snakemake.params.max_completion_tokens,
            Path(snakemake.output.summary).parent,
        )
    for step in summary["funnel"]:
        print(f"{step['step']:>22}: {step['rows_before']:>9,} -> {step['rows_after']:>9,}")


# dask starts worker processes with 'spawn', which re-imports this file: guard the work.
if __name__ == "__main__":
    main()
