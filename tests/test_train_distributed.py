"""Data-parallel training (train.gpus) on the CPU: torchrun with 2 gloo processes, the tiny demo model.

The same samples and the same result as one process: the loss curve and the adapter of a 2-process
run equal a 1-process run's; a killed 2-process run resumes to the uninterrupted adapter; a stop on a
signal is collective (exit 75) and a 1-process run resumes the 2-process checkpoint in the same order.
"""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import qa_rows, run_trainer, write_jsonl
from reasonflow.train.distributed import share
from reasonflow.train.trainer import STOPPED_EXIT

pytestmark = pytest.mark.slow

# answers of different lengths: a step's 8 samples pack into several rows of 128 tokens, split 2 ways
SETTINGS = {"max_steps": 6, "global_batch_size": 8, "lr": 2e-3, "max_length": 128, "lora_rank": 8, "lora_alpha": 16,
            "checkpoint_every": 2, "keep_last": 5, "data_order": "shuffle", "seed": 11}


@pytest.fixture(scope="module")
def training(demo_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_dir / "model")
    rows = qa_rows(tok, 48, answer=lambda i: " ".join(["step"] * (3 + 11 * (i % 5))) + f" so {i % 7}.")
    return write_jsonl(tmp_path_factory.mktemp("dp") / "t.jsonl", rows)


@pytest.fixture(scope="module")
def straight(training, demo_dir, tmp_path_factory):
    """The uninterrupted one-process run every data-parallel run is compared with."""
    return run_trainer(tmp_path_factory.mktemp("one"), demo_dir, training, SETTINGS, name="one")


def _metrics(run) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _same_adapter(a, b) -> None:
    from safetensors.torch import load_file

    x, y = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (a, b))
    assert x.keys() == y.keys() and x
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-6)


def test_share_balances_tokens_and_is_the_same_everywhere():
    assert share([100, 10, 90, 20], 2) == [[0, 1], [2, 3]]
    assert share([5], 3) == [[0], [], []]
    parts = share([7, 3, 9, 1, 4, 4, 8], 3)
    assert sorted(i for p in parts for i in p) == list(range(7)) and all(p == sorted(p) for p in parts)


def test_two_processes_give_the_one_process_curve_and_adapter(training, straight, demo_dir, tmp_path):
    two = run_trainer(tmp_path, demo_dir, training, {**SETTINGS, "gpus": 2}, name="two")
    log = (tmp_path / "two.out").read_text()
    assert "data parallel: 2 processes (gloo)" in log and "rank 1 of 2 on cpu" in log, log[-2000:]
    one_rows, two_rows = _metrics(straight), _metrics(two)
    assert [r["step"] for r in two_rows] == [str(s) for s in range(1, 7)]
    for a, b in zip(one_rows, two_rows):
        assert (a["samples"], a["tokens"]) == (b["samples"], b["tokens"])  # the same samples, step by step
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-5)
        assert float(b["grad_norm"]) == pytest.approx(float(a["grad_norm"]), rel=1e-4)
    _same_adapter(straight, two)
    # only rank 0 wrote TensorBoard events (each rank would open its own event file)
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_adapter(training, straight, demo_dir, tmp_path):
    # rank 0 SIGKILLs itself right after its step-4 checkpoint; torchrun stops rank 1 and fails
    killed = run_trainer(tmp_path, demo_dir, training, {**SETTINGS, "gpus": 2}, name="killed", kill_after=4,
                         expect=1)
    assert "torchrun with 2 processes failed" in (tmp_path / "killed.out").read_text()
    assert not (killed / "adapter").exists()
    run_trainer(tmp_path, demo_dir, training, {**SETTINGS, "gpus": 2}, name="killed")
    assert "resuming from" in (tmp_path / "killed.out").read_text()
    _same_adapter(straight, killed)


def test_a_stop_is_collective_and_one_process_resumes_the_two_process_checkpoint(training, straight, demo_dir,
                                                                                   tmp_path):
    """Both ranks get SIGUSR1 after step 3: every rank stops there, rank 0 checkpoints, the job exits 75;
    one process then resumes the 2-process checkpoint and consumes the same samples in the same order."""
    stopped = run_trainer(tmp_path, demo_dir, training, {**SETTINGS, "gpus": 2}, name="stopped", signal_after=3)
    log = (tmp_path / "stopped.out").read_text()
    assert "SIGUSR1: stopped after step 3 of 6" in log and f"exit status {STOPPED_EXIT}" in log, log[-2000:]
    assert (sorted(p.name for p in (stopped / "checkpoints").glob("*/step-*"))
            == ["step-0000002", "step-0000003"])
    run_trainer(tmp_path, demo_dir, training, SETTINGS, name="stopped")  # gpus 1 now: same checkpoint folder
    assert "resuming from" in (tmp_path / "stopped.out").read_text()
    assert [r["samples"] for r in _metrics(stopped)] == [r["samples"] for r in _metrics(straight)]
    _same_adapter(straight, stopped)
