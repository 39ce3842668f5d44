"""The per-step names the rules, the trainer and the evaluation report share (reasonflow.steps)."""

from reasonflow.steps import step_dir, step_label, step_of


def test_a_step_label_reads_back_and_other_model_labels_are_no_step():
    assert [step_of(step_label(s)) for s in (1, 10, 2000)] == [1, 10, 2000]
    assert step_of("adapter") is None and step_of("base") is None and step_of("step-") is None
    assert step_of("step-10b") is None


def test_step_folders_sort_by_step(tmp_path):
    names = [step_dir(tmp_path, s).name for s in (2000, 10, 500)]
    assert sorted(names) == ["step-0000010", "step-0000500", "step-0002000"]
    assert step_dir("results/train/snapshots", "20") == step_dir("results/train/snapshots", 20)
