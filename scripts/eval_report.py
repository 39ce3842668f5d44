"""Snakemake entry point: summary, base-vs-adapter comparison and bar chart from all per-item CSVs."""

from reasonflow.evaluate.score import report
from reasonflow.smk import log_to

log_to(snakemake.log[0])
summary = report(
    list(snakemake.input.csvs),
    snakemake.output.summary,
    snakemake.output.comparison,
    snakemake.output.plot,
    baseline=snakemake.params.get("baseline", "base"),
)
print(summary.to_string(index=False))
