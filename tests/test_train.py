"""LoRA training on the tiny demo model (CPU): labels, packing, learning, exact resume, reload."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import qa_rows as _rows
from conftest import run_trainer as _train
from conftest import write_jsonl as _write
from reasonflow.train.data import IGNORE, JsonlDataset, pack
from reasonflow.train.trainer import PLAIN, STOPPED_EXIT, TrainSettings, build_model, forward_loss, micro_batches

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tok(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir / "model")


def test_prompt_tokens_carry_no_loss(tok, tmp_path):
    ds = JsonlDataset(_write(tmp_path / "t.jsonl", _rows(tok, 3)), tok, 512)
    for i in range(3):
        row, ex = ds.row(i), ds.example(i)
        n_prompt = len(tok(row["input"], add_special_tokens=False)["input_ids"])
        assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
        assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:] and len(ex.labels) > n_prompt


def test_packing_matches_unpacked_loss_and_gradients(tok, tmp_path, demo_dir):
    """Plain path (SDPA, block-diagonal mask): same loss and LoRA gradients packed vs one sample at a time.

    The fast path's packing (varlen attention) is checked in test_train_fast.py.
    """
    answers = lambda i: " ".join(["word"] * (5 + 7 * i)) + "."  # noqa: E731 (different lengths)
    ds = JsonlDataset(_write(tmp_path / "t.jsonl", _rows(tok, 4, answers)), tok, 512)
    examples = [ds.example(i) for i in range(4)]
    num_items = sum(t != IGNORE for e in examples for t in e.labels)
    settings = TrainSettings(lora_rank=8, lora_alpha=16, precision="fp32", max_length=512, **PLAIN)
    torch.manual_seed(0)
    model = build_model(str(demo_dir / "model"), settings, torch.device("cpu"))
    for p in model.parameters():  # make LoRA-B non-zero so the adapter takes part in the check
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)

    def run(batches):
        model.zero_grad()
        loss = sum(forward_loss(model, b, num_items, torch.device("cpu")) for b in batches)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        return loss.item(), grad

    packed_rows = pack(examples, 512, tok.pad_token_id)
    assert len(packed_rows) == 1  # all four samples share one row
    packed = micro_batches(examples, settings, tok.pad_token_id)
    single = [micro_batches([e], TrainSettings(packing=False, **PLAIN), tok.pad_token_id)[0] for e in examples]
    (lp, gp), (lu, gu) = run(packed), run(single)
    assert lp == pytest.approx(lu, rel=1e-5)
    assert torch.nn.functional.cosine_similarity(gp, gu, dim=0).item() > 0.9999
    # and a plain causal mask over the packed row (attention across samples) is measurably different
    row = packed[0]
    plain = {"input_ids": row["input_ids"], "labels": row["labels"], "real_tokens": 0}
    assert run([plain])[0] != pytest.approx(lu, rel=1e-4)


def test_loss_decreases_on_a_learnable_fixture(tok, tmp_path, demo_dir):
    training = _write(tmp_path / "t.jsonl", _rows(tok, 32))
    out = _train(tmp_path, demo_dir, training, {"max_steps": 40, "global_batch_size": 8, "lr": 5e-3, "min_lr": 5e-4,
                                                "max_length": 512, "lora_rank": 16, "lora_alpha": 32,
                                                "checkpoint_every": 40})
    lines = (out / "metrics.csv").read_text().splitlines()
    losses = [float(line.split(",")[1]) for line in lines[1:]]
    # "learned" means: a clear drop, and the end well below the start
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5 and losses[-1] < losses[0] - 0.8, losses
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_killed_run_resumes_to_the_same_adapter(tok, tmp_path, demo_dir):
    from safetensors.torch import load_file

    training = _write(tmp_path / "t.jsonl", _rows(tok, 40))
    settings = {"max_steps": 8, "global_batch_size": 6, "lr": 2e-3, "max_length": 256, "lora_rank": 8,
                "lora_alpha": 16, "checkpoint_every": 2, "keep_last": 2, "data_order": "shuffle", "seed": 7}
    straight = _train(tmp_path, demo_dir, training, settings, name="straight")
    killed = _train(tmp_path, demo_dir, training, settings, name="killed", kill_after=4)
    assert sorted(p.name for p in (killed / "checkpoints").glob("*/step-*")) == ["step-0000002", "step-0000004"]
    assert not (killed / "adapter").exists()
    resumed = _train(tmp_path, demo_dir, training, settings, name="killed")
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ckpts = sorted(p.name for p in (resumed / "checkpoints").glob("*/step-*"))
    assert ckpts == ["step-0000006", "step-0000008"]  # keep_last=2
    steps = [line.split(",")[0] for line in (resumed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 9)]


def test_stop_signal_checkpoints_exits_75_and_the_rerun_gives_the_same_adapter(tok, tmp_path, demo_dir):
    """SIGUSR1 (Slurm's warning before a time limit) after step 3 of 6, no regular checkpoint before
    the end: the run writes one at step 3, exits 75, and the rerun ends where a straight run does."""
    from safetensors.torch import load_file

    training = _write(tmp_path / "t.jsonl", _rows(tok, 30))
    settings = {"max_steps": 6, "global_batch_size": 5, "lr": 2e-3, "max_length": 256, "lora_rank": 8,
                "lora_alpha": 16, "checkpoint_every": 100, "data_order": "shuffle", "seed": 3}
    straight = _train(tmp_path, demo_dir, training, settings, name="straight")
    stopped = _train(tmp_path, demo_dir, training, settings, name="stopped", signal_after=3)
    log = (tmp_path / "stopped.out").read_text()
    assert "SIGUSR1 received" in log and "SIGUSR1: stopped after step 3 of 6" in log and "exit status 75" in log
    ckpts = sorted((stopped / "checkpoints").glob("*/step-*"))
    assert [p.name for p in ckpts] == ["step-0000003"] and (ckpts[0] / "COMPLETE").is_file()
    assert not (stopped / "adapter").exists()
    assert len((stopped / "metrics.csv").read_text().splitlines()) == 1 + 3
    _train(tmp_path, demo_dir, training, settings, name="stopped")
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(stopped / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert "resuming from" in (tmp_path / "stopped.out").read_text()


def test_segments_stop_at_their_step_and_the_last_one_ends_with_a_straight_runs_adapter_and_curve(
        tok, tmp_path, demo_dir):
    """stop_at_step 2, then 4, then the rest of 6 steps (train.segment_steps: 2): each segment leaves
    a complete checkpoint at its step and no adapter; the last one writes the adapter of a straight
    run and the whole metrics curve, even though each job's metrics.csv was deleted before the next
    (as Snakemake deletes a job's outputs), because the checkpoints carry the rows. adapter_every 2
    keeps the adapters of steps 2 and 4 (not 6, the final one), equal to the checkpoints' there, and
    is left out of the run's identity (the last job, without it, resumes the same run)."""
    from safetensors.torch import load_file

    training = _write(tmp_path / "t.jsonl", _rows(tok, 30))
    settings = {"max_steps": 6, "global_batch_size": 5, "lr": 2e-3, "max_length": 256, "lora_rank": 8,
                "lora_alpha": 16, "checkpoint_every": 100, "data_order": "shuffle", "seed": 3}
    straight = _train(tmp_path, demo_dir, training, settings, name="straight")
    for stop_at in (2, 4):
        seg = _train(tmp_path, demo_dir, training, {**settings, "stop_at_step": stop_at, "adapter_every": 2},
                     name="seg")
        log = (tmp_path / "seg.out").read_text()
        assert f"segment: training to step {stop_at} of 6" in log and f'"segment_end": {stop_at}' in log, log[-2000:]
        assert not (seg / "adapter").exists()
        assert (sorted((seg / "checkpoints").glob("*/step-*"))[-1]).name == f"step-{stop_at:07d}"
        assert len((seg / "metrics.csv").read_text().splitlines()) == 1 + stop_at
        kept = load_file(seg / "snapshots" / f"step-{stop_at:07d}" / "adapter_model.safetensors")
        ckpt = load_file(sorted((seg / "checkpoints").glob("*/step-*"))[-1] / "adapter" / "adapter_model.safetensors")
        assert kept.keys() == ckpt.keys() and all(torch.equal(kept[k], ckpt[k]) for k in kept)
        (seg / "metrics.csv").unlink()
    _train(tmp_path, demo_dir, training, settings, name="seg")
    assert "resuming from" in (tmp_path / "seg.out").read_text()
    assert sorted(p.name for p in (seg / "snapshots").iterdir()) == ["step-0000002", "step-0000004"]
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(seg / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    curve = [line.split(",")[:3] for line in (seg / "metrics.csv").read_text().splitlines()]
    ref = [line.split(",")[:3] for line in (straight / "metrics.csv").read_text().splitlines()]
    assert [r[0] for r in curve] == [r[0] for r in ref] and len(curve) == 7
    for (_, loss_a, lr_a), (_, loss_b, lr_b) in zip(curve[1:], ref[1:]):
        assert abs(float(loss_a) - float(loss_b)) < 1e-4 and float(lr_a) == pytest.approx(float(lr_b))


def test_job_end_time_within_the_margin_stops_with_a_checkpoint_and_the_rerun_finishes_the_same(
        tok, tmp_path, demo_dir):
    """stop_margin_s: a Slurm job whose end time (SLURM_JOB_END_TIME) is already within the margin
    stops after its first step with a checkpoint and exit 75, without any signal; a rerun outside
    that job resumes, and the stop margin does not change the run's checkpoint identity."""
    import time

    from safetensors.torch import load_file

    training = _write(tmp_path / "t.jsonl", _rows(tok, 30))
    settings = {"max_steps": 5, "global_batch_size": 5, "lr": 2e-3, "max_length": 256, "lora_rank": 8,
                "lora_alpha": 16, "checkpoint_every": 100, "data_order": "shuffle", "seed": 5}
    straight = _train(tmp_path, demo_dir, training, settings, name="straight")
    margin = {**settings, "stop_margin_s": 3600}
    end = {"SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": str(int(time.time()) + 3600)}
    stopped = _train(tmp_path, demo_dir, training, margin, name="stopped", env_extra=end, expect=STOPPED_EXIT)
    log = (tmp_path / "stopped.out").read_text()
    assert "stopping with a checkpoint when less than 3600 s plus one step remain" in log
    assert "TIME_LIMIT: stopped after step 1 of 5" in log and "exit status 75" in log, log[-2000:]
    assert [p.name for p in (stopped / "checkpoints").glob("*/step-*")] == ["step-0000001"]
    # far from the end: the margin never triggers
    far = {"SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": str(int(time.time()) + 10**6)}
    _train(tmp_path, demo_dir, training, margin, name="stopped", env_extra=far)
    assert "resuming from" in (tmp_path / "stopped.out").read_text()
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(stopped / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_job_end_time_from_the_environment_else_none():
    from reasonflow.train.trainer import job_end_time

    assert job_end_time({"SLURM_JOB_END_TIME": "1700000000", "SLURM_JOB_ID": "9"}) == 1700000000.0
    assert job_end_time({}) is None  # not in a Slurm job
    # a job id no controller knows (or no squeue at all): no end time, no stop
    assert job_end_time({"SLURM_JOB_ID": "999999999", "SLURM_JOB_END_TIME": "0"}) is None


def test_adapter_reloads_with_peft_and_changes_the_model(tok, tmp_path, demo_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    training = _write(tmp_path / "t.jsonl", _rows(tok, 16))
    out = _train(tmp_path, demo_dir, training, {"max_steps": 5, "global_batch_size": 8, "lr": 5e-3,
                                                "max_length": 256, "lora_rank": 8, "lora_alpha": 16})
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"}
    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model")
    ids = tok("Question 1?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, out / "adapter")
        after = tuned(ids).logits
    assert not torch.allclose(before, after)
