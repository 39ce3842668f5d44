"""Shared fixtures: the demo fixture tree (built by `make fixtures`) and helpers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    if not (DEMO / "MANIFEST.json").is_file():
        pytest.fail("demo fixtures missing: run `make fixtures` (make test does it)")
    return DEMO


@pytest.fixture(scope="session")
def expected_fates(demo_dir) -> dict[str, dict]:
    """``"<file>@<offset>" -> {"fate", "case", ...}`` for every line of every raw file."""
    fates = {}
    with open(demo_dir / "expected_fates.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            fates[f"{rec['file']}@{rec['offset']}"] = rec
    return fates


def demo_workdir(root: Path, demo_dir: Path) -> Path:
    """A private working directory for a demo run: config and fixtures symlinked, raw files copied
    (tests add files there)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config").symlink_to(REPO / "config")
    (root / "resources/demo").mkdir(parents=True)
    for entry in demo_dir.iterdir():
        if entry.name == "raw":
            shutil.copytree(entry, root / "resources/demo/raw")
        else:
            (root / "resources/demo" / entry.name).symlink_to(entry)
    return root


def copy_run(local: Path, dest: Path) -> Path:
    """A copy of the finished run in ``local`` (results, logs, Snakemake's metadata; links kept)
    without the states a rerun would resume from (training checkpoints, the evaluation's answer
    cache), so the jobs a test replans there redo the work rather than reuse ``local``'s."""
    shutil.copytree(local, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete", "log"))
    for state in ("results/train/checkpoints", "results/eval/cache"):
        shutil.rmtree(dest / state, ignore_errors=True)
    return dest


DEMO_RUN_TIMEOUT = 1200


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_dir) -> Path:
    """The whole demo workflow run once per test session (``--cores 2``), in a private working
    directory: test_workflow's checks and test_slurm's local reference share it."""
    workdir = demo_workdir(tmp_path_factory.mktemp("wf"), demo_dir)
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
           "--configfile", "config/demo.yaml"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DEMO_RUN_TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return workdir


def planned(proc) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}; {} when nothing is to be done."""
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


SELECTED = ("SFT/chat/chat.jsonl", "SFT/math/math_v1.1.jsonl")


def settings_for(demo_dir, **overrides):
    from reasonflow.curation.run import CurationSettings

    base = CurationSettings(tokenizer=str(demo_dir / "tokenizer"), max_tokens=4096, max_completion_tokens=2048)
    return dataclasses.replace(base, chunk_rows=700, **overrides)


def curate_whole_file(demo_dir, tmp, source, settings, tag="run"):
    """Curate one raw demo file as a single shard through the real Curator pipeline."""
    from reasonflow.curation.run import curate_shard
    from reasonflow.split import write_shard

    raw = demo_dir / "raw" / source
    shard, info = tmp / f"{tag}.jsonl", tmp / f"{tag}.json"
    write_shard(raw, source, 0, raw.stat().st_size + 1, shard, info)
    outs = {k: tmp / f"{tag}.{k}" for k in ("kept", "dropped", "rejects", "stats")}
    stats = curate_shard(str(shard), str(info), settings, *(str(outs[k]) for k in outs), num_cpus=2)
    return stats, outs


@pytest.fixture(scope="session")
def curated(demo_dir, tmp_path_factory):
    """Both selected demo files curated once per test session: {source: (stats, paths)}."""
    tmp = tmp_path_factory.mktemp("curated")
    return {
        src: curate_whole_file(demo_dir, tmp, src, settings_for(demo_dir), tag=src.replace("/", "_"))
        for src in SELECTED
    }


SERVE_SYSTEM = "detailed thinking off"


def chat_messages(question, system=SERVE_SYSTEM):
    msgs = [{"role": "user", "content": question}]
    return ([{"role": "system", "content": system}] if system is not None else []) + msgs


@pytest.fixture(scope="session")
def lora_adapter(demo_dir, tmp_path_factory):
    """A LoRA adapter trained on the demo model to answer "The answer is N." (~10 s), shared by the serving tests."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_dir / "model")
    tmp = tmp_path_factory.mktemp("adapter")
    rows = [{"input": tok.apply_chat_template(chat_messages(f"Question {i}?"), tokenize=False,
                                              add_generation_prompt=True),
             "output": f"The answer is {i % 3}.<|eot_id|>"} for i in range(16)]
    (tmp / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"max_steps": 20, "global_batch_size": 8, "lr": 5e-3, "max_length": 512, "lora_rank": 8,
                "lora_alpha": 16}
    out = subprocess.run(
        [sys.executable, "-m", "reasonflow.train", "--base", str(demo_dir / "model"), "--training",
         str(tmp / "training.jsonl"), "--settings", json.dumps(settings), "--out", str(tmp / "train")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "train" / "adapter"


# -- the trainer on small question/answer rows (test_train.py, test_train_distributed.py) -----------

def qa_rows(tok, n, answer=lambda i: f"The answer is {i % 3}."):
    rows = []
    for i in range(n):
        prompt = tok.apply_chat_template(
            [{"role": "system", "content": "detailed thinking off"}, {"role": "user", "content": f"Question {i}?"}],
            tokenize=False, add_generation_prompt=True)
        rows.append({"input": prompt, "output": answer(i) + "<|eot_id|>", "reasoning": "off"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_trainer(tmp_path, demo_dir, training, settings: dict, name="run", kill_after=None, signal_after=None,
                env_extra=None, expect=None):
    """Run the trainer CLI; with ``kill_after=N`` it SIGKILLs itself right after checkpoint N, with
    ``signal_after=N`` it sends itself SIGUSR1 after step N (a real signal through the real handler);
    ``env_extra`` is added to its environment, ``expect`` overrides the expected exit status."""
    import signal
    import sys

    from reasonflow.train.trainer import KILL_AFTER_CHECKPOINT, SIGNAL_AFTER_STEP, STOPPED_EXIT

    cmd = [sys.executable, "-m", "reasonflow.train", "--base", str(demo_dir / "model"), "--training", training,
           "--settings", json.dumps(settings), "--out", str(tmp_path / name), "--device", "cpu"]
    env = dict(os.environ)
    if kill_after:
        env[KILL_AFTER_CHECKPOINT] = str(kill_after)
    if signal_after:
        env[SIGNAL_AFTER_STEP] = str(signal_after)
    env.update(env_extra or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    expected = expect if expect is not None else -signal.SIGKILL if kill_after else STOPPED_EXIT if signal_after else 0
    assert proc.returncode == expected, proc.stderr[-2000:]
    (tmp_path / f"{name}.out").write_text(proc.stdout + proc.stderr)
    return tmp_path / name
