import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from reasonflow.split import shard_count
from reasonflow import hub
from reasonflow.data_fetch import read_manifest, select
from reasonflow.steps import step_dir, step_label, step_of

min_version("9.0")


validate(config, "../config/schemas/config.schema.yaml")


def unset_profile_variables():
    """Resources the profile set to ``$NAME`` whose variable is not in the environment (Snakemake
    passes such a value on literally, and sbatch refuses it only after submission has begun).
    """
    rs = workflow.resource_settings
    groups = [("default-resources", rs.default_resources or {})]
    groups += [
        (f"set-resources {rule}", res)
        for rule, res in (rs.overwrite_resources or {}).items()
    ]
    missing = {}
    for where, resources in groups:
        for name, res in resources.items():
            raw = getattr(res, "raw", res)
            for var in re.findall(
                r"\$\{?([A-Za-z_]\w*)", raw if isinstance(raw, str) else ""
            ):
                if not os.environ.get(var):
                    missing.setdefault(var, []).append(f"{where}: {name}")
    return missing


if unset_profile_variables():
    raise WorkflowError(
        "the profile's resources name environment variables that are not set, so nothing was "
        "submitted: "
        + "; ".join(
            f"${v} ({', '.join(w)})" for v, w in unset_profile_variables().items()
        )
        + ". Export them first, e.g. export RF_CPU_PARTITION=cpu RF_GPU_PARTITION=gpu "
        "RF_SLURM_ACCOUNT=myproject"
    )

RAW_DIR = Path(config["data"]["raw_dir"])
SHARD_BYTES = int(config["data"]["shard_mb"] * 2**20)
# data.source set: the fetch_data checkpoint downloads the selection into RAW_DIR, and the shard plan
# is known only after it has run (see curated()). Unset: RAW_DIR is read at parse time, as always.
DATA_SOURCE = config["data"].get("source")


wildcard_constraints:
    source=r"[A-Za-z0-9_.\-/]+",
    shard=r"\d{5}",


def selected_sources():
    """Raw files (relative to data.raw_dir, without .jsonl) selected by data.file_filter.

    With data.source: the files fetch_data fetched (its manifest); only callable inside an input
    function, where Snakemake defers the job until that checkpoint has run.
    """
    if DATA_SOURCE:
        manifest = read_manifest(checkpoints.fetch_data.get().output.manifest)
        gone = [
            f["path"] for f in manifest["files"] if not (RAW_DIR / f["path"]).is_file()
        ]
        if gone:
            raise WorkflowError(
                f"{gone} listed in results/data/manifest.json are gone from data.raw_dir="
                f"{str(RAW_DIR)!r}: fetch them again with `snakemake -R fetch_data ...`"
            )
        return [f["path"].removesuffix(".jsonl") for f in manifest["files"]]
    if not RAW_DIR.is_dir():
        raise WorkflowError(
            f"data.raw_dir={str(RAW_DIR)!r} is not a directory: download the dataset or fix the config"
        )
    files = sorted(p.relative_to(RAW_DIR).as_posix() for p in RAW_DIR.rglob("*.jsonl"))
    chosen = select(files, config["data"]["file_filter"])
    if not chosen:
        raise WorkflowError(
            f"no *.jsonl under data.raw_dir={str(RAW_DIR)!r} matches data.file_filter="
            f"{config['data']['file_filter']} ({len(files)} files found)"
        )
    return [f.removesuffix(".jsonl") for f in chosen]


def raw_file(wildcards):
    if DATA_SOURCE:
        checkpoints.fetch_data.get()  # the file is there once fetch_data has run
    return RAW_DIR / f"{wildcards.source}.jsonl"


def shards_of(source):
    size = (RAW_DIR / f"{source}.jsonl").stat().st_size
    return [f"{i:05d}" for i in range(shard_count(size, SHARD_BYTES))]


def all_shards():
    return [(src, shard) for src in selected_sources() for shard in shards_of(src)]


def stable(value):
    """Config values with dict keys sorted (recursively): params are compared by their repr, so
    reordering keys in a YAML file must not look like a change and trigger reruns."""
    if isinstance(value, dict):
        return {k: stable(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def curated(kind):
    """Paths of one kind of per-shard curation output for every shard.

    With data.source an input function: the shards follow from the fetched files' sizes, so the
    jobs that take every shard are planned once the fetch_data checkpoint has run.
    """

    def paths(wildcards=None):
        return [
            f"results/curation/curated/{src}/{shard}.{kind}"
            for src, shard in all_shards()
        ]

    return paths if DATA_SOURCE else paths()


def model_dir(name_or_path):
    """Local directory for a model/tokenizer: the path itself, or where download_model puts a hub id."""
    return (
        name_or_path
        if hub.is_local(name_or_path)
        else hub.local_dir("resources/hub", name_or_path)
    )


BASE_MODEL_DIR = model_dir(config["model"]["base"])
TOKENIZER_DIR = model_dir(config["model"].get("tokenizer") or config["model"]["base"])


def curation_settings():
    """Every config value the curation jobs depend on (goes through params:)."""
    keys = (
        "boxed_mode",
        "token_count_mode",
        "max_tokens",
        "max_completion_tokens",
        "language_label",
        "language_min_prob",
        "language_model",
        "chunk_rows",
    )
    cur = config["curation"]
    return stable({"tokenizer": TOKENIZER_DIR, **{k: cur[k] for k in keys if k in cur}})


def merge_settings():
    """Every config value the merge depends on (goes through params:)."""
    keys = (
        "interleave",
        "partition_rows",
        "max_samples",
        "dedup",
        "decontaminate",
        "ngram",
        "question_files",
    )
    return stable({k: config["merge"][k] for k in keys if k in config["merge"]})


def decontamination_benchmarks():
    """The evaluated benchmarks the merge decontaminates against (none when it is off). The
    schema asks for one benchmark at least, so decontamination always has questions to check.
    """
    if not config["merge"].get("decontaminate", True):
        return []
    return list(config["evaluate"]["benchmarks"])


def prepared_benchmarks():
    """eval_prep's items files of those benchmarks: the exact items the evaluation asks."""
    return [f"results/eval/data/{name}.jsonl" for name in decontamination_benchmarks()]


def train_settings():
    """Every config value training depends on (goes through params:); the job layout
    (segment_steps, max_job_hours) shapes the DAG and the resources, not what is computed.
    """
    skip = ("backend", "nemo", "segment_steps", "max_job_hours")
    return stable({k: v for k, v in config["train"].items() if k not in skip})


TRAIN_BACKEND = config["train"].get("backend", "hf")


def train_segment_ends():
    """The steps where train.segment_steps ends one training job and the next resumes: the segments
    are train_segment jobs 1..n, and `train` runs the last part. [] = one job (segment_steps 0).
    """
    seg = int(config["train"].get("segment_steps", 0) or 0)
    if seg <= 0:
        return []
    if TRAIN_BACKEND != "hf":
        raise ValueError(
            f"train.segment_steps={seg} needs train.backend: hf (got {TRAIN_BACKEND!r}); "
            "set train.segment_steps: 0 for the NeMo backend"
        )
    return list(range(seg, int(config["train"]["max_steps"]), seg))


TRAIN_SEGMENTS = train_segment_ends()


def train_gpus():
    """train.gpus: data-parallel processes of each training job, one GPU each (torchrun on one node;
    the Slurm profile asks for that many GPUs). Backend hf only."""
    n = int(config["train"].get("gpus", 1))
    if n > 1 and TRAIN_BACKEND != "hf":
        raise ValueError(
            f"train.gpus={n} needs train.backend: hf (got {TRAIN_BACKEND!r}); "
            "set train.gpus: 1 for the NeMo backend"
        )
    return n


TRAIN_GPUS = train_gpus()


def train_job_minutes():
    """The runtime each training job asks the cluster for: train.max_job_hours."""
    return int(round(float(config["train"].get("max_job_hours", 24)) * 60))


def train_segment_done(seg):
    """Marker of training segment ``seg`` (1-based); [] before the first."""
    return f"results/train/segments/{seg}.json" if seg >= 1 else []


# train.adapter_every's adapters; not outputs: deploy_step takes the training job's marker as input
TRAIN_SNAPSHOTS = "results/train/snapshots"


def eval_steps():
    """evaluate.steps, checked: each a step below train.max_steps whose adapter training keeps
    (a multiple of train.adapter_every); the final adapter is the evaluate.models one.
    """
    steps = list(config["evaluate"].get("steps") or [])
    if not steps:
        return []
    every = int(config["train"].get("adapter_every", 0) or 0)
    last = int(config["train"]["max_steps"])
    if TRAIN_BACKEND != "hf":
        raise ValueError(
            f"evaluate.steps={steps} needs train.backend: hf (got {TRAIN_BACKEND!r}); "
            "set evaluate.steps: [] for the NeMo backend"
        )
    bad = [s for s in steps if not 0 < s < last or not every or s % every]
    if bad:
        raise ValueError(
            f"evaluate.steps {bad}: each step must lie in 1..{last - 1} (below train.max_steps "
            f"{last}, whose adapter is evaluated anyway) and be a multiple of "
            f"train.adapter_every ({every}), the steps whose adapters training keeps"
        )
    return sorted(set(steps))


EVAL_STEPS = eval_steps()


def step_trained_by(step):
    """The training job whose run passes ``step`` (its marker or the adapter): that job writes the
    step's adapter, so its evaluation can start while later segments still train."""
    for seg, end in enumerate(TRAIN_SEGMENTS, start=1):
        if step <= end:
            return train_segment_done(seg)
    return rules.train.output.adapter


def nemo_options():
    """train.nemo with its defaults (image, python, model_config, ...)."""
    from reasonflow.train.nemo_recipe import NEMO_DEFAULTS

    return {**NEMO_DEFAULTS, **config["train"].get("nemo", {})}


def nemo_values(step):
    """The NeMo recipe values each NeMo job depends on, as JSON for params (exact reruns).

    ``import`` takes only what the conversion needs, so changing a LoRA or optimizer value
    never re-imports the base model; ``train`` takes every recipe value.
    """
    import json

    from reasonflow.train.nemo_recipe import recipe_values
    from reasonflow.train.settings import TrainSettings

    settings = TrainSettings.from_config(config["train"])
    values = recipe_values(
        settings,
        nemo_options(),
        base=config["model"]["base"],
        dataset_root="results/train/nemo/data",
        restore_path="results/train/nemo/base_model",
        log_dir="results/train/nemo/run",
    )
    if step == "import":
        values = {k: values[k] for k in ("model.config", "import.source")}
    return json.dumps(values, sort_keys=True)


def eval_source_input(wildcards):
    """A benchmark's source as an input file when it is local (URLs are fetched by the job)."""
    src = config["evaluate"]["sources"][wildcards.benchmark]
    return [] if "://" in src else [src]


def eval_triton(wildcards):
    """The Triton repository an evaluate job serves: the final deployment, or that of a training step."""
    step = step_of(wildcards.model)
    if step is None:
        return rules.deploy.output.triton
    return expand(rules.deploy_step.output.triton, step=step)[0]


def eval_served_model(wildcards):
    """The OpenAI model id an evaluate job asks: evaluate.models' for its label; a step's adapter is
    served under the repository's adapter name."""
    if step_of(wildcards.model) is not None:
        return config["serve"]["repository"].get("adapter_name", "lora")
    return config["evaluate"]["models"][wildcards.model]


def serve_settings():
    """Server options; a relative serve_venv missing here is taken from the workflow's folder."""
    opts = dict(config["serve"]["server"])
    venv = opts.get("serve_venv")
    if venv and not os.path.isabs(venv) and not os.path.exists(venv):
        opts["serve_venv"] = os.path.join(workflow.basedir, venv)
    return stable(opts)
