# Reasoning model in a weekend, as one auditable DAG.
# Default config: the offline demo; the real recipe: --configfile config/config.yaml


configfile: "config/demo.yaml"


include: "rules/common.smk"
include: "rules/curation.smk"
include: "rules/merge.smk"


if TRAIN_BACKEND == "nemo":

    include: "rules/train_nemo.smk"

else:

    include: "rules/train.smk"


include: "rules/serve.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.curation_summary.output,
        rules.merge.output,
        rules.dataset_stats.output,
        rules.train.output,
        rules.deploy.output,
        rules.eval_report.output,
