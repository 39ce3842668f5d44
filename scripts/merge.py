"""Snakemake entry point: curriculum merge of all curated shards with dask."""

import json
import tempfile

from reasonflow.merge.run import MergeSettings, local_cluster, merge
from reasonflow.smk import log_to


def main() -> None:
    log_to(snakemake.log[0])
    settings = MergeSettings.from_config(snakemake.params.settings)
    benchmarks = dict(zip(snakemake.params.benchmarks, snakemake.input.benchmarks, strict=True))
    with local_cluster(snakemake.threads), tempfile.TemporaryDirectory(dir=snakemake.resources.tmpdir) as work:
        stats = merge(
            list(snakemake.input.kept),
            settings,
            snakemake.output.training,
            snakemake.output.duplicates,
            snakemake.output.contaminated,
            snakemake.output.stats,
            workdir=work,
            benchmarks=benchmarks,
            out_decontamination=snakemake.output.decontamination,
        )
    print(json.dumps(stats["counts"], indent=2))
    for source, row in stats["counts"]["decontamination"].items():
        print(f"decontamination: {source} ({row['kind']}): {row['questions']} questions checked, "
              f"{row['rows_removed']} rows removed")


# dask starts worker processes with 'spawn', which re-imports this file: guard the work.
if __name__ == "__main__":
    main()
