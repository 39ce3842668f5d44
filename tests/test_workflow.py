"""Real Snakemake runs of the demo workflow in an isolated working directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, copy_run, planned

pytestmark = pytest.mark.slow

DEMO = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
MAX_STEPS, EVAL_STEPS, ADAPTER_EVERY = (DEMO["train"]["max_steps"], DEMO["evaluate"]["steps"],
                                        DEMO["train"]["adapter_every"])
# after training, the final adapter's 12 evaluations (3 benchmarks x 2 modes x base/adapter), and each
# evaluate.steps adapter's deployment and 6 evaluations
EVALS = {"evaluate": 12 + len(EVAL_STEPS) * 6}
STEPS = {"deploy_step": len(EVAL_STEPS), **EVALS}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def config_variant(workdir: Path, name: str, **curation) -> str:
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["curation"].update(curation)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def n_shards(raw: Path) -> int:
    """Shards the demo config plans for the selected files under ``raw``."""
    from reasonflow.split import shard_count

    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["data"]
    files = [p for p in raw.rglob("*.jsonl") if any(s in p.relative_to(raw).as_posix() for s in cfg["file_filter"])]
    return sum(shard_count(p.stat().st_size, int(cfg["shard_mb"] * 2**20)) for p in files)


def test_demo_run_accounts_for_every_selected_row(demo_run, expected_fates):
    summary = json.loads((demo_run / "results/curation/summary.json").read_text())
    selected = [v for v in expected_fates.values() if v["fate"] != "not_selected"]
    total = summary["total"]
    assert total["rows_in"] == len(selected)
    assert total["kept"] == sum(v["fate"] == "kept" for v in selected)
    assert total["rejected"] == sum(v["fate"].startswith("rejected:") for v in selected)
    for name, n in total["dropped"].items():
        assert n == sum(v["fate"] == name for v in selected), name
    funnel = (demo_run / "results/curation/funnel.csv").read_text().splitlines()
    assert funnel[0] == "step,rows_before,removed,rows_after"
    assert funnel[-1].endswith(f",{total['kept']}")


def test_every_job_left_a_log_and_curation_a_benchmark(demo_run):
    stats = sorted((demo_run / "results/curation/curated").rglob("*.stats.json"))
    assert len(stats) == n_shards(demo_run / "resources/demo/raw")
    for path in stats:
        rel = path.relative_to(demo_run / "results/curation/curated")
        stem = str(rel).removesuffix(".stats.json")
        assert (demo_run / "logs/curate_shard" / f"{stem}.log").is_file()
        assert (demo_run / "logs/split_shard" / f"{stem}.log").is_file()
        assert (demo_run / "benchmarks/curate_shard" / f"{stem}.tsv").is_file()


def test_unchanged_rerun_plans_nothing(demo_run):
    assert planned(snakemake(demo_run, "-n", "--configfile", "config/demo.yaml")) == {}


def test_changed_curation_value_plans_curation_and_downstream_only(demo_run):
    cfg = config_variant(demo_run, "fewer_tokens", max_completion_tokens=1000)
    jobs = planned(snakemake(demo_run, "-n", "--configfile", cfg))
    n = n_shards(demo_run / "resources/demo/raw")
    assert jobs == {"curate_shard": n, "curation_summary": 1, "merge": 1, "dataset_stats": 1, "train": 1,
                    "deploy": 1, **STEPS, "eval_report": 1, "all": 1}


def test_changed_learning_rate_plans_training_only(demo_run):
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["train"]["lr"] = 5e-4
    path = demo_run / "lr.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert planned(snakemake(demo_run, "-n", "--configfile", str(path))) == {"train": 1, "deploy": 1, **STEPS, "eval_report": 1, "all": 1}


def test_segmented_training_runs_as_chained_jobs_and_ends_with_the_one_job_adapter(demo_run, tmp_path):
    """train.segment_steps a third of the demo's steps (rounded up): the DAG shows train_segment 1 and 2 before
    train, each job asking train.max_job_hours of runtime; run for real in a copy of the demo run,
    the chain ends with the adapter and loss curve of the demo's one-job training."""
    from safetensors.torch import load_file
    from torch.testing import assert_close

    work = copy_run(demo_run, tmp_path / "seg")
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    seg_steps = -(-MAX_STEPS // 3)  # rounded up: two segments, then train
    cfg["train"].update(segment_steps=seg_steps, max_job_hours=0.5)
    path = work / "segments.yaml"
    path.write_text(yaml.safe_dump(cfg))
    dry = snakemake(work, "results/train/adapter", "-n", "--configfile", str(path))
    assert planned(dry) == {"train_segment": 2, "train": 1}
    # each kept adapter is deployed once the segment that trains its step is done
    steps = snakemake(work, *(f"results/serve/steps/{s}/triton_repo" for s in EVAL_STEPS), "-n",
                      "--configfile", str(path)).stdout
    for step in EVAL_STEPS:
        seg = -(-step // seg_steps)
        assert re.search(rf"input: resources/demo/model, results/train/segments/{seg}\.json\n\s+output: "
                         rf"results/serve/steps/{step}/triton_repo", steps), steps[-3000:]
    assert len(re.findall(r"\bruntime=30\b", dry.stdout + dry.stderr)) == 3, dry.stdout[-3000:]
    snakemake(work, "results/train/adapter", "--configfile", str(path))
    for seg, end in ((1, seg_steps), (2, 2 * seg_steps)):
        assert json.loads((work / f"results/train/segments/{seg}.json").read_text())["segment_end"] == end
        assert f"segment: training to step {end} of {MAX_STEPS}" in (work / f"logs/train_segment/{seg}.log").read_text()
    assert f"(step {2 * seg_steps}, " in (work / "logs/train.log").read_text()
    a = load_file(work / "results/train/adapter/adapter_model.safetensors")
    b = load_file(demo_run / "results/train/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    ours, ref = ((root / "results/train/metrics.csv").read_text().splitlines() for root in (work, demo_run))
    assert len(ours) == len(ref) == MAX_STEPS + 1
    assert [row.split(",")[0] for row in ours] == [row.split(",")[0] for row in ref]
    for mine, theirs in zip(ours[1:], ref[1:]):
        assert abs(float(mine.split(",")[1]) - float(theirs.split(",")[1])) < 1e-4, (mine, theirs)


def test_changed_evaluation_max_tokens_plans_evaluation_only(demo_run):
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["evaluate"]["settings"]["max_tokens"] = 16
    path = demo_run / "eval_tokens.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert planned(snakemake(demo_run, "-n", "--configfile", str(path))) == {**EVALS, "eval_report": 1,
                                                                              "all": 1}


def test_changed_evaluation_steps_retrain_nothing(demo_run):
    """evaluate.steps is the evaluation's: dropping a step replans the report alone, and a step whose
    adapter training does not keep (not a multiple of train.adapter_every) is a config error naming
    both keys, before anything runs."""
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["evaluate"]["steps"] = EVAL_STEPS[-1:]
    path = demo_run / "one_step.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert planned(snakemake(demo_run, "-n", "--configfile", str(path))) == {"eval_report": 1, "all": 1}
    cfg["evaluate"]["steps"] = [ADAPTER_EVERY + 1, *EVAL_STEPS]
    path.write_text(yaml.safe_dump(cfg))
    bad = snakemake(demo_run, "-n", "--configfile", str(path), check=False)
    assert bad.returncode != 0
    out = bad.stdout + bad.stderr
    assert f"evaluate.steps [{ADAPTER_EVERY + 1}]" in out and f"train.adapter_every ({ADAPTER_EVERY})" in out, out[-2000:]


def test_accuracy_against_training_step(demo_run):
    """evaluate.steps: the adapters training kept at those steps were deployed and evaluated on every
    benchmark and mode; steps.csv and steps.png put them beside the final adapter (train.max_steps)
    and the base model's reference values."""
    import pandas as pd

    for step in EVAL_STEPS:
        kept = demo_run / f"results/train/snapshots/step-{step:07d}"
        assert (kept / "adapter_config.json").is_file() and (kept / "adapter_model.safetensors").is_file()
        pbtxt = (demo_run / f"results/serve/steps/{step}/triton_repo/reasonflow/config.pbtxt").read_text()
        assert str(kept.resolve()) in pbtxt
    curve = pd.read_csv(demo_run / "results/eval/steps.csv")
    summary = pd.read_csv(demo_run / "results/eval/summary.csv").set_index(["model", "benchmark", "mode"])
    assert set(summary.index.get_level_values("model")) == {"base", "adapter"}  # the steps have their own table
    for (bench, mode), g in curve.groupby(["benchmark", "mode"]):
        assert list(g["step"]) == [*EVAL_STEPS, MAX_STEPS]
        assert list(g["model"]) == [*(f"step-{s}" for s in EVAL_STEPS), "adapter"]
        final = g[g["model"] == "adapter"].iloc[0]
        assert final["accuracy"] == summary.loc[("adapter", bench, mode), "accuracy"]
        assert (g["baseline_accuracy"] == summary.loc[("base", bench, mode), "accuracy"]).all()
        assert (g["n"] > 0).all()
    assert len(curve) == (len(EVAL_STEPS) + 1) * 6
    assert (demo_run / "results/eval/steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_changed_merge_value_plans_merge_and_downstream_only(demo_run):
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["merge"]["interleave"] = "row"
    path = demo_run / "row_mode.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert planned(snakemake(demo_run, "-n", "--configfile", str(path))) == {
        "merge": 1, "dataset_stats": 1, "train": 1, "deploy": 1, **STEPS, "eval_report": 1, "all": 1}


def test_adding_a_raw_file_plans_only_its_jobs_and_downstream(demo_run):
    raw = demo_run / "resources/demo/raw/SFT/chat"
    extra = raw / "chat_extra.jsonl"
    extra.write_bytes(b"".join((raw / "chat.jsonl").open("rb").readlines()[:5]))
    try:
        jobs = planned(snakemake(demo_run, "-n", "--configfile", "config/demo.yaml"))
    finally:
        extra.unlink()
    assert jobs == {"split_shard": 1, "curate_shard": 1, "curation_summary": 1, "merge": 1, "dataset_stats": 1,
                    "train": 1, "deploy": 1, **STEPS, "eval_report": 1, "all": 1}


def test_merge_outputs_and_statistics(demo_run, expected_fates):
    training = (demo_run / "results/merge/training.jsonl").read_text().splitlines()
    summary = json.loads((demo_run / "results/stats/summary.json").read_text())
    funnel = summary["funnel"]
    assert funnel[0]["rows_before"] == sum(v["fate"] != "not_selected" for v in expected_fates.values())
    assert funnel[-1]["rows_after"] == len(training)
    for name in ("funnel", "token_histograms", "category_reasoning"):
        assert (demo_run / f"results/stats/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hist = summary["histograms"]["completion_token_count"]
    assert sum(hist["on"]) + sum(hist["off"]) == len(training)


def test_planted_contamination_is_removed_and_reported_per_benchmark(demo_run, demo_dir):
    expected = json.loads((demo_dir / "expected_merge.json").read_text())
    removed = [json.loads(line) for line in (demo_run / "results/merge/contaminated.jsonl").open()]
    assert sorted(r["id"] for r in removed) == expected["contaminated_ids"]
    per = json.loads((demo_run / "results/merge/merge_stats.json").read_text())["counts"]["decontamination"]
    for name in ("mmlu", "gpqa_main", "gpqa_diamond"):  # the evaluated items, as eval_prep wrote them
        items = (demo_run / f"results/eval/data/{name}.jsonl").read_text().splitlines()
        assert per[name] == {"kind": "benchmark", "questions": len(items), "rows_removed": per[name]["rows_removed"]}
        assert per[name]["rows_removed"] >= 1, name
    assert sum(v["rows_removed"] for v in per.values()) == len(removed)
    assert (demo_run / "results/merge/decontamination.csv").read_text().startswith("source,kind,questions,")


def test_changed_evaluation_source_replans_merge_and_downstream(demo_run):
    """The evaluated items are what the training set is decontaminated against."""
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    copy = demo_run / "gpqa_main_copy.csv"
    shutil.copy(demo_run / cfg["evaluate"]["sources"]["gpqa_main"], copy)
    cfg["evaluate"]["sources"]["gpqa_main"] = str(copy)
    path = demo_run / "other_source.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert planned(snakemake(demo_run, "-n", "--configfile", str(path))) == {
        "eval_prep": 1, "merge": 1, "dataset_stats": 1, "train": 1, "deploy": 1, **STEPS, "eval_report": 1,
        "all": 1}


def test_real_config_decontaminates_against_the_prepared_benchmarks(tmp_path):
    """A dry run of config/config.yaml (a fake raw folder): eval_prep of every benchmark feeds merge."""
    raw = tmp_path / "raw/SFT/chat"
    raw.mkdir(parents=True)
    (raw / "chat.jsonl").write_text('{"input": [], "output": "x"}\n')
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["data"]["raw_dir"] = str(tmp_path / "raw")
    cfg["data"].pop("source", None)
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "config").symlink_to(REPO / "config")
    dot = snakemake(tmp_path, "-n", "--dag", "--configfile", str(tmp_path / "real.yaml")).stdout
    nodes = {m[1]: m[2] for m in re.finditer(r'^\s*(\d+)\[label = "([^"]*)"', dot, re.M)}
    edges = set(re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M))
    merge = next(k for k, v in nodes.items() if v.startswith("merge"))
    feeding = sorted(nodes[a].split("benchmark: ")[1] for a, b in edges if b == merge and nodes[a].startswith("eval_prep"))
    assert feeding == sorted(cfg["evaluate"]["benchmarks"]), dot[-2000:]


def test_changed_shard_size_replans_the_split(demo_run):
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["data"]["shard_mb"] = 4
    path = demo_run / "bigger_shards.yaml"
    path.write_text(yaml.safe_dump(cfg))
    jobs = planned(snakemake(demo_run, "-n", "--configfile", str(path)))
    assert jobs["split_shard"] == jobs["curate_shard"] < n_shards(demo_run / "resources/demo/raw")


@pytest.mark.parametrize(
    "curation, message",
    [
        ({"max_tokens": "lots"}, "'lots' is not of type 'integer'"),
        ({"boxed_mode": "sometimes"}, "'sometimes' is not one of"),
    ],
)
def test_bad_config_values_are_named(tmp_path, curation, message):
    proc = snakemake(tmp_path, "-n", "--configfile", config_variant(tmp_path, "bad", **curation), check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_missing_raw_dir_is_named(tmp_path):
    for name in ("config", "resources"):
        (tmp_path / name).symlink_to(REPO / name)
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["data"]["raw_dir"] = str(tmp_path / "nowhere")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "c.yaml"), check=False)
    assert proc.returncode != 0
    assert "nowhere" in proc.stdout + proc.stderr and "is not a directory" in proc.stdout + proc.stderr


def test_slurm_profile_with_unset_variables_stops_before_submitting(tmp_path):
    for name in ("config", "resources"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RF_")}
    env["RF_CPU_PARTITION"] = "cpu"
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--profile",
           str(REPO / "profiles/slurm"), "-n", "--configfile", "config/demo.yaml"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "nothing was submitted" in out, out[-2000:]
    assert "$RF_SLURM_ACCOUNT (default-resources: slurm_account)" in out
    assert "$RF_GPU_PARTITION (set-resources train: slurm_partition" in out
    assert "$RF_CPU_PARTITION" not in out.split("nothing was submitted", 1)[1].split(". Export")[0]
    env.update(RF_GPU_PARTITION="gpu", RF_SLURM_ACCOUNT="acct")
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0 and "nothing was submitted" not in ok.stdout + ok.stderr, ok.stderr[-2000:]


def test_slurm_profile_asks_for_train_gpus_gpus(tmp_path):
    """train.gpus reaches the Slurm job of `train` (and of each train_segment): gpu=N (sbatch --gpus=h100:N)."""
    for name in ("config", "resources"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "RF_CPU_PARTITION": "cpu", "RF_GPU_PARTITION": "gpu", "RF_SLURM_ACCOUNT": "acct"}
    for gpus in (1, 4):
        cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
        cfg["train"].update(gpus=gpus, segment_steps=MAX_STEPS // 2)
        (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([str(BIN / "snakemake"), "results/train/adapter", "-s", str(REPO / "Snakefile"), "-d",
                               str(tmp_path), "--profile", str(REPO / "profiles/slurm"), "-n", "--configfile",
                               str(tmp_path / "g.yaml")],
                              capture_output=True, text=True, timeout=300, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-2000:]
        for rule in ("train_segment", "train"):
            job = out.split(f"\nrule {rule}:", 1)[1].split("\n\n", 1)[0]
            assert f"gpu={gpus}," in job and "gpu_model=h100" in job, job


def test_lint_and_format_are_clean():
    lint = subprocess.run([str(BIN / "snakemake"), "--lint", "-s", str(REPO / "Snakefile"), "-d", str(REPO)],
                          capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr or "no linting" in (lint.stdout + lint.stderr).lower()
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"], capture_output=True, text=True,
                         cwd=REPO)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) not installed: make audit installs it as root")
def test_audit_renders_dag_and_rulegraph_svg(demo_run):
    for flag in ("--dag", "--rulegraph"):
        dot = snakemake(demo_run, "-n", "--forceall", flag, "--configfile", "config/demo.yaml").stdout
        svg = subprocess.run(["dot", "-Tsvg"], input=dot[dot.index("digraph"):], capture_output=True, text=True,
                             check=True).stdout
        assert svg.lstrip().startswith(("<?xml", "<svg")) and "curate_shard" in svg


def test_evaluation_outputs(demo_run):
    import csv

    rows = list(csv.DictReader((demo_run / "results/eval/summary.csv").open()))
    assert {(r["model"], r["benchmark"], r["mode"]) for r in rows} == {
        (m, b, mode) for m in ("base", "adapter") for b in ("mmlu", "gpqa_diamond", "gpqa_main") for mode in ("on", "off")}
    assert all(len(r["dataset_sha256"]) == 64 for r in rows)
    assert (demo_run / "results/eval/accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (demo_run / "results/serve/triton_repo/reasonflow/config.pbtxt").is_file()
    # the servers were stopped by the evaluation jobs: no tritonserver is left running from this workdir
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(demo_run) not in ps


def test_the_demo_adapter_learned_what_its_base_cannot(demo_run):
    """The demo shows a working pipeline, not zeros: on every benchmark, in both reasoning modes, the
    random base gives (almost) no parseable answer and the adapter (almost) always one, and on the
    demo MMLU file the adapter beats chance (0.25) by three standard errors: its own and the one
    chance itself would have on that many items. A dropped adapter or a chat template that differs
    between training and serving fails here."""
    import math

    import pandas as pd

    s = pd.read_csv(demo_run / "results/eval/summary.csv").set_index(["model", "benchmark", "mode"])
    for bench in ("mmlu", "gpqa_diamond", "gpqa_main"):
        for mode in ("on", "off"):
            base, adapter = s.loc[("base", bench, mode)], s.loc[("adapter", bench, mode)]
            assert base["no_answer_rate"] >= 0.90, (bench, mode, base.to_dict())
            assert adapter["no_answer_rate"] <= 0.10, (bench, mode, adapter.to_dict())
    for mode in ("on", "off"):
        mmlu = s.loc[("adapter", "mmlu", mode)]
        chance_se = math.sqrt(0.25 * 0.75 / mmlu["n"])
        assert mmlu["accuracy"] - 0.25 >= 3 * max(mmlu["stderr"], chance_se), (mode, mmlu.to_dict())


def test_reordered_config_keys_plan_nothing(demo_run):
    """Params are compared by repr: the same config with keys in another order must not rerun anything."""
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    path = demo_run / "sorted_keys.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    assert planned(snakemake(demo_run, "-n", "--configfile", str(path))) == {}


def test_nemo_backend_plans_its_rules_and_imports_once(demo_run):
    """backend nemo: nemo_import + train replace train; a changed LoRA value does not re-import."""
    overlay = ["--configfile", str(REPO / "config/demo.yaml"), str(REPO / "config/nemo.yaml")]
    # (no evaluate.steps: the overlay sets [], the kept adapters are the hf backend's)
    assert planned(snakemake(demo_run, "-n", *overlay)) == {"nemo_import": 1, "train": 1, "deploy": 1,
                                                            "evaluate": 12, "eval_report": 1, "all": 1}
    imported = demo_run / "results/train/nemo/base_model"
    imported.mkdir(parents=True)
    (imported / "weights").write_text("stand-in: the real import needs a GPU and NeMo\n")
    snakemake(demo_run, "results/train/nemo/base_model", "--touch", *overlay)  # record it as made
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["train"].update(backend="nemo", lora_rank=16)
    cfg["evaluate"]["steps"] = []  # as config/nemo.yaml sets it: the kept adapters are the hf backend's
    (demo_run / "nemo_r16.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned(snakemake(demo_run, "-n", "--configfile", str(demo_run / "nemo_r16.yaml")))
    assert "nemo_import" not in jobs and jobs["train"] == 1
    lint = subprocess.run([str(BIN / "snakemake"), "--lint", "-s", str(REPO / "Snakefile"), "-d", str(demo_run),
                           *overlay], capture_output=True, text=True, cwd=demo_run)
    assert "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    shutil.rmtree(demo_run / "results/train/nemo")
