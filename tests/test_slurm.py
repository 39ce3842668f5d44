"""The demo workflow through real Slurm: profiles/slurm-ci on the one-node cluster of tools/slurm_local.sh.

Runs when a Slurm controller with the script's `cpu` and `gpu` partitions answers, or, with
RF_TEST_SLURM=1 as root on Debian, after starting one itself (`tools/slurm_local.sh up`, stopped
again with `down` at the end of the module). Otherwise every test here is skipped with the reason.
The Slurm run starts from a copy of the session's local demo run (conftest's demo_run) and forces one
raw shard's split (``--forcerun``): Snakemake replans that shard's split and curation and everything
downstream of them (summary, merge, statistics, training, deployment and one evaluate job of twelve:
TARGETS), so every rule that is not local goes through sbatch, and what the cluster makes is
compared with the local run's bytes. Training runs in two segments there (train.segment_steps: all but
the demo's last two steps: train_segment 1, then train), and the last one is given a runtime shorter than it
needs: it stops with a checkpoint before its time limit (train.stop_margin_s), fails with exit 75, is
retried by Snakemake and finishes, and the adapter still equals the local one-job run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, copy_run, planned

pytestmark = pytest.mark.slow

SCRIPT = REPO / "tools" / "slurm_local.sh"
PROFILE = REPO / "profiles" / "slurm-ci"
LOCAL_RULES = {"eval_prep", "download_model"}  # `localrule: True`: run by Snakemake itself (no sbatch)
GPU_RULES = {"train", "train_segment"}
# Every rule but eval_report, with one of the demo's 12 evaluate jobs (the smallest benchmark): the
# Slurm path of a Triton-serving job is shown once; the other 11 add CI time, not coverage.
EVAL_ITEMS = "results/eval/items/adapter/gpqa_diamond/on.csv"
TARGETS = ("results/curation/summary.json", "results/merge/training.jsonl", "results/stats/summary.json",
           "results/train/adapter", "results/serve/triton_repo", EVAL_ITEMS)
RUN_TIMEOUT = 1800
# the jobs the seeded Slurm directory replans (one forced shard, then everything downstream of it)
REPLAN = {"split_shard": 1, "curate_shard": 1, "curation_summary": 1, "merge": 1, "dataset_stats": 1,
          "train_segment": 1, "train": 1, "deploy": 1, "evaluate": 1}
# Training on the cluster: a first segment of all but the last two steps, then `train` (the last two)
# with a 2-minute runtime and a 120 s stop margin, so each attempt of it trains one step and stops: the
# first attempt stops after the last step but one (exit 75), Snakemake's retry resumes there and finishes.
MAX_STEPS = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["train"]["max_steps"]
SEGMENTS = {"train": {"segment_steps": MAX_STEPS - 2, "stop_margin_s": 120}}
SHORT_RUNTIME = 2  # minutes, the `train` job's


def cluster_ready() -> bool:
    """A controller answers and has the partitions profiles/slurm-ci submits to."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    # scontrol ping answers at once; sinfo retries an absent controller for ~9 s
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "is UP" not in ping.stdout:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%R %G %T"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return False
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    parts = {r[0] for r in rows}
    gpu_ok = any(r[0] == "gpu" and "gpu:h100" in r[1] for r in rows)
    alive = any(re.match(r"(idle|mixed|alloc|completing)", r[2]) for r in rows)
    return {"cpu", "gpu"} <= parts and gpu_ok and alive


def why_not_startable() -> str | None:
    if os.environ.get("RF_TEST_SLURM") != "1":
        return ("no Slurm cluster with partitions cpu/gpu answers (sinfo); start one with "
                "`sudo tools/slurm_local.sh up`, or set RF_TEST_SLURM=1 (root, Debian) to let the test do it")
    if os.geteuid() != 0:
        return "RF_TEST_SLURM=1 but not root: tools/slurm_local.sh up installs packages and starts daemons"
    if not Path("/etc/debian_version").is_file() or shutil.which("apt-get") is None:
        return "RF_TEST_SLURM=1 but not Debian (tools/slurm_local.sh installs slurm-wlm/munge with apt-get)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """Use the running test cluster, or start one (and stop it afterwards) when allowed."""
    if cluster_ready():
        yield {"started": False, "up_s": 0.0}
        return
    reason = why_not_startable()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    up_s = time.monotonic() - t0
    if proc.returncode != 0 or not cluster_ready():
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=120)
        pytest.fail(f"tools/slurm_local.sh up failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    try:
        yield {"started": True, "up_s": up_s}
    finally:
        subprocess.run(["scancel", "--user", str(os.geteuid())], capture_output=True, timeout=60)
        down = subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr


def snakemake(workdir: Path, *args: str, log: str | None = None) -> subprocess.CompletedProcess:
    """Snakemake run from inside `workdir` (the Slurm plugin's -D and log dir follow the cwd), on the
    demo config plus the segments of SEGMENTS (segments.yaml in `workdir`)."""
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--configfile", "config/demo.yaml",
           "segments.yaml", *args]
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        run_id = re.search(r"SLURM run ID: (\S+)", out + str(exc.stderr or ""))
        if run_id:  # do not leave the run's jobs behind
            subprocess.run(["scancel", "--name", run_id[1]], capture_output=True, timeout=60)
        pytest.fail(f"{' '.join(cmd)} ran over {RUN_TIMEOUT}s")
    if log:
        (workdir / log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}) in {workdir}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def rule_of(log: Path) -> str:
    """The rule of a plugin log: logs/slurm/rule_<rule>/[<wildcards>/]<slurm jobid>.log."""
    return next(p for p in log.parts if p.startswith("rule_")).removeprefix("rule_")


@pytest.fixture(scope="module")
def runs(slurm_cluster, demo_run, tmp_path_factory):
    """TARGETS remade through Slurm (profiles/slurm-ci) in a seeded copy of the session's local demo run
    (conftest's demo_run, ``--cores 2``), which is the reference."""
    slurm_dir = tmp_path_factory.mktemp("slurm") / "slurm"
    copy_run(demo_run, slurm_dir)
    (slurm_dir / "segments.yaml").write_text(yaml.safe_dump(SEGMENTS))
    short = yaml.safe_load((PROFILE / "config.yaml").read_text())  # profiles/slurm-ci, `train` 2 minutes
    short["set-resources"]["train"]["runtime"] = SHORT_RUNTIME
    (slurm_dir / "profile").mkdir()
    (slurm_dir / "profile" / "config.yaml").write_text(yaml.safe_dump(short))
    # the first raw shard's split: forced (with everything downstream of it) on the cluster
    forced = sorted((slurm_dir / "results/curation/shards").rglob("*.jsonl"))[0].relative_to(slurm_dir)
    force = f"--forcerun={forced}"
    profile = str(slurm_dir / "profile")
    plan = planned(snakemake(slurm_dir, "-n", "--profile", profile, force, *TARGETS))
    t0 = time.monotonic()
    # --verbose: the plugin logs each sbatch command line (debug level); --retries 1: the stopped
    # train job is run again (profiles/slurm has retries: 1; profiles/slurm-ci fails at once)
    proc = snakemake(slurm_dir, "--profile", profile, "--retries", "1", "--verbose", force, *TARGETS,
                     log="slurm_run.log")
    slurm_s = time.monotonic() - t0
    # right away, while the GPU jobs are younger than MinJobAge and scontrol still knows them
    submitted = [(int(m[2]), Path(m[3])) for m in re.finditer(
        r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", proc.stdout + proc.stderr)]
    gpu_ids = [sid for sid, log in submitted if rule_of(log) in GPU_RULES]
    scontrol = {sid: subprocess.run(["scontrol", "-o", "show", "job", str(sid)], capture_output=True, text=True).stdout
                for sid in gpu_ids}
    print(f"\nslurm cluster up: {slurm_cluster['up_s']:.1f}s (started here: {slurm_cluster['started']}), "
          f"slurm run: {slurm_s:.0f}s ({len(submitted)} jobs)")
    return {"slurm": slurm_dir, "local": demo_run, "plan": plan, "forced": forced, "out": proc.stdout + proc.stderr,
            "submitted": submitted, "gpu_scontrol": scontrol}


def test_a_forced_shard_replans_its_jobs_and_downstream_only(runs):
    assert runs["plan"] == REPLAN, runs["plan"]
    forced = runs["forced"]  # remade on the cluster, byte for byte
    assert (runs["slurm"] / forced).stat().st_mtime > (runs["local"] / forced).stat().st_mtime
    assert (runs["slurm"] / forced).read_bytes() == (runs["local"] / forced).read_bytes()


def test_every_job_but_the_local_ones_went_through_sbatch(runs):
    plan, submitted = runs["plan"], runs["submitted"]
    expected = {rule: n for rule, n in plan.items() if rule not in LOCAL_RULES}
    expected["train"] += 1  # its retry after the stop at the time limit
    assert len(submitted) == sum(expected.values()), (plan, len(submitted))
    slurm_ids = [sid for sid, _ in submitted]
    assert len(set(slurm_ids)) == len(slurm_ids)
    # one kept plugin log per job: logs/slurm/rule_<rule>/[<wildcards>/]<slurm jobid>.log
    logs = sorted((runs["slurm"] / "logs/slurm").rglob("*.log"))
    per_rule: dict[str, int] = {}
    for log in logs:
        per_rule[rule_of(log)] = per_rule.get(rule_of(log), 0) + 1
    assert per_rule == expected
    assert sorted(int(log.stem) for log in logs) == sorted(slurm_ids)
    # Snakemake saw every Slurm job finish
    assert f"{sum(plan.values())} of {sum(plan.values())} steps (100%) done" in runs["out"]


def test_jobs_completed_in_slurm_on_the_right_partitions(runs):
    """Slurm's own record of the jobs (jobcomp/filetxt log: written without accounting too): all
    completed but the first `train` attempt, which stopped at its time limit with exit 75."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    comp = dict(re.findall(r"^(JobComp(?:Type|Loc))\s*=\s*(\S+)", config, re.M))
    if comp.get("JobCompType") != "jobcomp/filetxt" or not os.access(comp.get("JobCompLoc", ""), os.R_OK):
        pytest.skip(f"the cluster keeps no readable jobcomp/filetxt log ({comp})")
    records = {}
    for line in Path(comp["JobCompLoc"]).read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        records[int(fields["JobId"])] = fields
    first_train = min(sid for sid, log in runs["submitted"] if rule_of(log) == "train")
    for sid, log in runs["submitted"]:
        rec = records.get(sid)
        assert rec is not None, f"Slurm job {sid} ({log}) not in {comp['JobCompLoc']}"
        assert rec["JobState"] == ("FAILED" if sid == first_train else "COMPLETED"), rec
        assert rec["Partition"] == ("gpu" if rule_of(log) in GPU_RULES else "cpu"), (log, rec)
        assert rec["Account"] == "reasonflow", rec


def test_training_jobs_asked_slurm_for_the_gpu(runs):
    sbatch = [line for line in runs["out"].splitlines() if "sbatch call:" in line and "rule_train" in line]
    assert len(sbatch) == 3, sbatch  # train_segment 1, train, train's retry
    for line in sbatch:
        assert "--gpus=h100:1" in line and " -p gpu" in line and "--cpus-per-gpu=2" in line, line
    assert len(runs["gpu_scontrol"]) == 3
    for sid, job in runs["gpu_scontrol"].items():
        assert job, f"scontrol no longer knows Slurm job {sid} (older than MinJobAge?)"
        assert "Partition=gpu " in job and re.search(r"TresPerJob=\S*gpu:h100:1", job), job


def test_a_train_job_at_its_time_limit_checkpoints_fails_and_its_retry_finishes(runs):
    """The `train` job (the last two steps) asks 2 minutes with a 120 s stop margin: its first attempt
    learns the job's end time from squeue, stops after one step with a checkpoint and exit 75 (the
    Slurm job fails), and keeps its log (Snakemake deletes a failed job's log before the retry);
    Snakemake retries it, the retry resumes at the last step but one and writes the adapter; the first
    segment (30 minutes) is not stopped."""
    train = sorted(sid for sid, log in runs["submitted"] if rule_of(log) == "train")
    (segment,) = [sid for sid, log in runs["submitted"] if rule_of(log) == "train_segment"]
    first, retry = (runs["gpu_scontrol"][sid] for sid in train)
    assert "JobState=FAILED" in first and "JobState=COMPLETED" in retry, (first, retry)
    assert "TimeLimit=00:02:00" in first and "TimeLimit=00:02:00" in retry, (first, retry)
    assert "JobState=COMPLETED" in runs["gpu_scontrol"][segment]
    (kept,) = (runs["slurm"] / "logs/train.stopped").glob(f"*-slurm{train[0]}.log")
    first_log = kept.read_text()
    assert "stopping with a checkpoint when less than 120 s plus one step remain" in first_log, first_log[-3000:]
    last, end = MAX_STEPS, MAX_STEPS - 2
    assert f"TIME_LIMIT: stopped after step {last - 1} of {last}" in first_log, first_log[-3000:]
    assert "exit status 75" in first_log, first_log[-3000:]
    retry_log = (runs["slurm"] / "logs/train.log").read_text()
    assert f"(step {last - 1}, " in retry_log and "TIME_LIMIT" not in retry_log, retry_log[-3000:]
    seg_log = (runs["slurm"] / "logs/train_segment/1.log").read_text()
    assert f"segment: training to step {end} of {last}" in seg_log and "TIME_LIMIT" not in seg_log, seg_log[-3000:]
    assert [d.name for d in (runs["slurm"] / "logs").rglob("*.stopped")] == ["train.stopped"]


def test_outputs_equal_a_local_run(runs):
    slurm, local = runs["slurm"], runs["local"]
    curated = sorted(p.relative_to(local) for p in (local / "results/curation/curated").rglob("*") if p.is_file())
    assert curated == sorted(p.relative_to(slurm) for p in (slurm / "results/curation/curated").rglob("*")
                             if p.is_file())
    exact = [Path("results/merge") / n for n in ("training.jsonl", "duplicates.jsonl", "contaminated.jsonl",
                                                 "merge_stats.json")]
    exact += [Path("results/curation/summary.json"), Path("results/curation/funnel.csv"),
              Path("results/stats/summary.json"), *curated]
    differ = [str(p) for p in exact if (slurm / p).read_bytes() != (local / p).read_bytes()]
    assert not differ, differ
    assert (slurm / "results/merge/training.jsonl").stat().st_size > 0


def test_evaluate_job_served_and_scored_the_same_items_as_locally(runs):
    import pandas as pd

    slurm, local = (pd.read_csv(root / EVAL_ITEMS) for root in (runs["slurm"], runs["local"]))
    keys = ["model", "benchmark", "mode", "id", "repeat", "expected"]
    assert len(slurm) > 0 and slurm[keys].equals(local[keys])
    assert (slurm["error"].isna() | (slurm["error"] == "")).all(), slurm["error"].unique()


def test_trained_adapter_matches_the_local_one(runs):
    import numpy as np
    from safetensors.numpy import load_file

    slurm, local = runs["slurm"] / "results/train", runs["local"] / "results/train"

    def config(root):  # target_modules is a set: its order varies between processes
        cfg = json.loads((root / "adapter/adapter_config.json").read_text())
        cfg["target_modules"] = sorted(cfg["target_modules"])
        return cfg

    assert config(slurm) == config(local)
    # metrics.csv: step, loss, lr equal within tolerance (tokens/s and memory are timings)
    def columns(root):
        rows = [line.split(",") for line in (root / "metrics.csv").read_text().splitlines()]
        head = rows[0]
        return {k: [float(r[head.index(k)]) for r in rows[1:]] for k in ("step", "loss", "lr")}

    a, b = columns(slurm), columns(local)
    assert a["step"] == b["step"] and len(a["step"]) > 0
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    np.testing.assert_allclose(a["lr"], b["lr"], rtol=1e-6)
    wa = load_file(slurm / "adapter/adapter_model.safetensors")
    wb = load_file(local / "adapter/adapter_model.safetensors")
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=1e-3, atol=1e-5, err_msg=key)
    assert (slurm / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
