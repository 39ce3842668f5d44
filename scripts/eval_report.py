"""Snakemake entry point: summary, base-vs-adapter comparison and bar chart from all per-item CSVs;
accuracy and no-answer rate against training step (evaluate.steps)."""

from reasonflow.evaluate.score import report
from reasonflow.smk import log_to

log_to(snakemake.log[0])
summary = report(
    list(snakemake.input.csvs),
    snakemake.output.summary,
    snakemake.output.comparison,
    snakemake.output.plot,
    baseline=snakemake.params.get("baseline", "base"),
    step_csvs=list(snakemake.input.get("step_csvs", [])),
    out_steps=snakemake.output.get("steps"),
    out_steps_png=snakemake.output.get("steps_plot"),
    final_step=snakemake.params.get("final_step"),
)
print(summary.to_string(index=False))
