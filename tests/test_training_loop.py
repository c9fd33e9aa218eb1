"""The run loop on CPU: determinism, exact resume after a crash, NaN handling, weights file."""

from __future__ import annotations

import pytest
import standin_model
from hrm_layout import write_dataset
from train_helpers import assert_same_weights, final_weights, metric_files, tiny_params

from hrm.training import loop, step
from hrm.training.step import TrainingDiverged


@pytest.fixture()
def data_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), train_groups=10, test_examples=6)


@pytest.fixture(autouse=True)
def model_seams(monkeypatch):
    standin_model.install(monkeypatch)


def test_same_params_twice_identical_metrics_and_weights(data_root, tmp_path, capsys):
    first = tiny_params(data_root, tmp_path / "a")
    second = tiny_params(data_root, tmp_path / "b")
    summary = loop.train(first)
    loop.train(second)
    out = capsys.readouterr().out
    # 6 epochs x 10 groups x mean examples / 4
    assert "planned steps: " in out
    files = metric_files(first)
    assert files == metric_files(second)
    assert "plots/metrics/train/lm_loss.tsv" in files and "plots/metrics/eval/exact_accuracy.tsv" in files
    assert_same_weights(final_weights(first), final_weights(second))
    steps = [int(line.split("\t")[0]) for line in files["plots/metrics/train/lm_loss.tsv"].splitlines()[1:]]
    assert steps == list(range(1, summary["step"] + 1))
    # three iterations -> three evals
    assert len(files["plots/metrics/eval/accuracy.tsv"].splitlines()) == 1 + 3


def test_other_seed_other_metrics(data_root, tmp_path):
    first = tiny_params(data_root, tmp_path / "a")
    other = tiny_params(data_root, tmp_path / "b", seed=4)
    loop.train(first)
    loop.train(other)
    assert (
        metric_files(first)["plots/metrics/train/lm_loss.tsv"]
        != metric_files(other)["plots/metrics/train/lm_loss.tsv"]
    )


def crash_at(monkeypatch, crash_step: int) -> None:
    """Make the step function die like a killed process (no checkpoint) once it reaches `crash_step`."""
    real = step.train_step

    def dying(state, batch, **kwargs):
        if state.step + 1 == crash_step:
            raise SystemExit("simulated kill")
        return real(state, batch, **kwargs)

    monkeypatch.setattr(loop_step_module(), "train_step", dying)


def loop_step_module():
    import hrm.training.step as module

    return module


def test_crash_then_resume_bit_identical(data_root, tmp_path, monkeypatch):
    reference = tiny_params(data_root, tmp_path / "ref")
    loop.train(reference)
    total = int(metric_files(reference)["metrics.json"].split('"step": ')[1].split("\n")[0].strip(" ,"))

    params = tiny_params(data_root, tmp_path / "run")
    crash_at(monkeypatch, total - 2)  # after the second eval's checkpoint, before the end
    with pytest.raises(SystemExit):
        loop.train(params)
    logged = metric_files(params)["plots/metrics/train/lm_loss.tsv"]
    assert len(logged.splitlines()) - 1 == total - 3  # rows past the checkpoint exist before the resume
    monkeypatch.setattr(loop_step_module(), "train_step", REAL_STEP)
    loop.train(params)
    assert metric_files(params) == metric_files(reference)
    assert_same_weights(final_weights(params), final_weights(reference))


REAL_STEP = step.train_step


def test_max_steps_stops_early_then_resumes_same_trajectory(data_root, tmp_path):
    reference = tiny_params(data_root, tmp_path / "ref")
    loop.train(reference)
    params = tiny_params(data_root, tmp_path / "run", max_steps=4)
    assert loop.train(params)["step"] == 4
    params["train"]["max_steps"] = 0  # not part of the fingerprint: resumes the same line
    loop.train(params)
    ref_files, files = metric_files(reference), metric_files(params)
    assert files["plots/metrics/train/lm_loss.tsv"] == ref_files["plots/metrics/train/lm_loss.tsv"]
    assert_same_weights(final_weights(params), final_weights(reference))


POISON_STEP = 15  # after the first eval (about 10 steps at these sizes)


def test_nan_stops_with_clear_error_and_keeps_checkpoint(data_root, tmp_path, monkeypatch):
    params = tiny_params(data_root, tmp_path / "run")
    real_build = loop.build_model
    calls = {"n": 0}

    def poisoned(arch, metadata):
        head = real_build(arch, metadata)
        forward = head.forward

        def forward_with_nan(*args, **kwargs):
            carry, loss, metrics, outputs, halted = forward(*args, **kwargs)
            if head.training:
                calls["n"] += 1
                if calls["n"] == POISON_STEP:
                    loss = loss * float("nan")
            return carry, loss, metrics, outputs, halted

        head.forward = forward_with_nan
        return head

    monkeypatch.setattr(loop, "build_model", poisoned)
    with pytest.raises(TrainingDiverged, match=f"diverged at step {POISON_STEP}"):
        loop.train(params)
    from pathlib import Path

    folders = list(Path(params["paths"]["checkpoints"]).glob("*/step_*"))
    # the checkpoint of the first eval (before the NaN) is there, whole, and nothing was written after it
    assert len(folders) == 1 and 0 < int(folders[0].name.split("_")[1]) < POISON_STEP
    assert (folders[0] / "common.pt").exists() and (folders[0] / "rank0.pt").exists()
    assert not Path(params["paths"]["model"]).exists()
    eval_steps = metric_files(params)["plots/metrics/eval/accuracy.tsv"].splitlines()[1:]
    assert [int(row.split("\t")[0]) for row in eval_steps] == [int(folders[0].name.split("_")[1])]
