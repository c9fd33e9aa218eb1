"""The run loop on CPU with a tiny HRM: determinism, exact resume (crash, signal, step limit), NaN handling."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from train_helpers import assert_same_weights, final_weights, metric_files, tiny_params

import hrm.training.step as step_module
from hrm.training import loop
from hrm.training.step import TrainingDiverged

REAL_STEP = step_module.train_step


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(tiny_run_data, tmp_path_factory):
    """One uninterrupted run that the other tests compare against."""
    params = tiny_params(tiny_run_data, tmp_path_factory.mktemp("reference"))
    summary = loop.train(params)
    return params, summary


def total_steps(params: dict) -> int:
    return json.loads((Path(params["paths"]["train_log"]) / "metrics.json").read_text())["step"]


def eval_steps(params: dict) -> list[int]:
    rows = metric_files(params)["plots/metrics/eval/accuracy.tsv"].splitlines()[1:]
    return [int(row.split("\t")[0]) for row in rows]


def test_same_params_twice_identical_metrics_and_weights(reference, tmp_path, capsys):
    ref_params, summary = reference
    params = tiny_params(Path(ref_params["paths"]["hrm"]), tmp_path)
    loop.train(params)
    out = capsys.readouterr().out
    assert "planned steps: 31 = int(epochs 6 x groups 10" in out
    files = metric_files(params)
    assert files == metric_files(ref_params)
    for name in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss", "lr"):
        assert f"plots/metrics/train/{name}.tsv" in files
        assert f"plots/metrics/eval/{name}.tsv" in files or name == "lr"
    assert "plots/metrics/train/q_continue_loss.tsv" in files
    assert_same_weights(final_weights(params), final_weights(ref_params))
    loss_rows = files["plots/metrics/train/lm_loss.tsv"].splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in loss_rows] == list(range(1, summary["step"] + 1))
    assert len(eval_steps(params)) == 3  # epochs 6 / eval_interval 2
    # train/count: rows that halted at each step (every row halts by halt_max_steps 3, batch 4)
    counts = [float(r.split("\t")[1]) for r in files["plots/metrics/train/count.tsv"].splitlines()[1:]]
    assert (
        len(counts) == summary["step"] and all(0 <= c <= 4 for c in counts) and sum(counts) >= 4 * (31 // 3)
    )


def test_weights_file_has_official_layout(reference):
    params, _ = reference
    weights = final_weights(params)  # torch.load(weights_only=True)
    assert "model.inner.puzzle_emb.weights" in weights
    assert "model.inner.H_level.layers.0.self_attn.qkv_proj.weight" in weights
    assert not any(k.startswith("_orig_mod.") or "local_weights" in k for k in weights)


def test_crash_then_resume_bit_identical(reference, tmp_path, monkeypatch):
    ref_params, _ = reference
    total = total_steps(ref_params)
    crash = total - 2  # after the second eval's checkpoint, before the end

    def dying(state, batch, **kwargs):
        if state.step + 1 == crash:
            raise SystemExit("simulated kill: no checkpoint")
        return REAL_STEP(state, batch, **kwargs)

    params = tiny_params(Path(ref_params["paths"]["hrm"]), tmp_path)
    monkeypatch.setattr(step_module, "train_step", dying)
    with pytest.raises(SystemExit):
        loop.train(params)
    logged = metric_files(params)["plots/metrics/train/lm_loss.tsv"]
    assert len(logged.splitlines()) - 1 == crash - 1
    assert eval_steps(params)[-1] < crash - 1  # rows past the checkpoint exist and must be dropped on resume
    monkeypatch.setattr(step_module, "train_step", REAL_STEP)
    loop.train(params)
    assert metric_files(params) == metric_files(ref_params)
    assert_same_weights(final_weights(params), final_weights(ref_params))


def test_sigterm_checkpoints_then_resume_bit_identical(reference, tmp_path, monkeypatch):
    ref_params, _ = reference
    params = tiny_params(Path(ref_params["paths"]["hrm"]), tmp_path)

    def signalled(state, batch, **kwargs):
        if state.step == 6:
            os.kill(
                os.getpid(), signal.SIGTERM
            )  # arrives during step 7; ranks agree at step 8 and stop after it
        return REAL_STEP(state, batch, **kwargs)

    monkeypatch.setattr(step_module, "train_step", signalled)
    with pytest.raises(loop.TrainingInterrupted, match="stopped at step 8") as stopped:
        loop.train(params)
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    folders = list(Path(params["paths"]["checkpoints"]).glob("*/step_*"))
    assert [f.name for f in folders] == ["step_000000008"]
    monkeypatch.setattr(step_module, "train_step", REAL_STEP)
    loop.train(params)
    assert metric_files(params) == metric_files(ref_params)
    assert_same_weights(final_weights(params), final_weights(ref_params))


def test_max_steps_stops_early_then_resumes_same_trajectory(reference, tmp_path):
    ref_params, _ = reference
    params = tiny_params(Path(ref_params["paths"]["hrm"]), tmp_path, max_steps=4)
    assert loop.train(params)["step"] == 4
    assert eval_steps(params) == [4]  # a smoke run ends with an eval and weights
    assert Path(params["paths"]["model"]).exists()
    params["train"]["max_steps"] = 0  # not part of the fingerprint: continues the same run
    loop.train(params)
    ref_files, files = metric_files(ref_params), metric_files(params)
    assert files["plots/metrics/train/lm_loss.tsv"] == ref_files["plots/metrics/train/lm_loss.tsv"]
    assert eval_steps(params) == sorted([4, *eval_steps(ref_params)])
    assert_same_weights(final_weights(params), final_weights(ref_params))


POISON_STEP = 15  # after the first eval (about 10 steps at these sizes)


def poison_weights(module: torch.nn.Module) -> None:
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))


def poison_one_gradient(module: torch.nn.Module) -> None:
    def one_inf(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[0, 1] = float("inf")
        return grad

    module.get_parameter("model.inner.lm_head.weight").register_hook(one_inf)


@pytest.mark.parametrize(
    ("poison", "named"),
    [
        (poison_weights, "the loss is nan"),
        (
            poison_one_gradient,
            r"the gradient of model\.inner\.lm_head\.weight has 1 of 192 values non-finite, first \[0, 1\] = inf",
        ),
    ],
)
def test_nan_stops_with_clear_error_and_keeps_checkpoint(reference, tmp_path, monkeypatch, poison, named):
    """The message names the step, the tensor (the loss or a parameter's gradient) and its first bad values."""
    ref_params, _ = reference
    params = tiny_params(Path(ref_params["paths"]["hrm"]), tmp_path)

    def poisoned(state, batch, **kwargs):
        if state.step + 1 == POISON_STEP:
            poison(state.module)
        return REAL_STEP(state, batch, **kwargs)

    monkeypatch.setattr(step_module, "train_step", poisoned)
    with pytest.raises(
        TrainingDiverged, match=f"diverged at step {POISON_STEP}: {named}.*Last good checkpoint: .*step_0"
    ):
        loop.train(params)
    folders = list(Path(params["paths"]["checkpoints"]).glob("*/step_*"))
    # the checkpoint of the first eval is there, whole, and nothing was written after the NaN
    assert len(folders) == 1
    saved_step = int(folders[0].name.split("_")[1])
    assert saved_step == eval_steps(params)[0] < POISON_STEP
    assert (folders[0] / "common.pt").exists() and (folders[0] / "rank0.pt").exists()
    saved = torch.load(folders[0] / "common.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert not Path(params["paths"]["model"]).exists()


def load_stage():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_stage", Path(__file__).parent.parent / "stages" / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["paths"].update(hrm="no/such/folder"),
            "no/such/folder/train/dataset.json: file not found",
        ),
        (lambda p: p["train"].update(eval_interval=4), "train.eval_interval 4 must divide train.epochs 6"),
        (lambda p: p["train"].update(lr="fast"), "train.lr must be a number"),
        (lambda p: p["train"].update(global_batch_size=5000), "no full batch"),
    ],
)
def test_stage_reports_bad_settings_without_traceback(reference, tmp_path, change, message):
    import yaml
    from typer.testing import CliRunner

    params = tiny_params(Path(reference[0]["paths"]["hrm"]), tmp_path)
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(load_stage().app, ["--params", str(path)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_eval_on_routing_data_logs_the_evaluate_stages_route_metrics(tmp_path):
    """The trainer's eval and the evaluate stage score the same predictions the same way (budget curves
    read the trainer's eval: route_optimal_rate there must mean what it means in the stage's metrics.json)."""
    from routing_layout import write_routing_dataset

    from hrm.config import deep_merge
    from hrm.evaluation import runner

    data_root = write_routing_dataset(tmp_path / "data", train_bases=6, test_bases=5, size=6)
    params = tiny_params(data_root, tmp_path / "run", epochs=4, eval_interval=2)
    summary = loop.train(params)
    assert {"route_valid_rate", "route_optimal_rate", "exact_accuracy"} <= set(summary["eval"])
    rows = metric_files(params)["plots/metrics/eval/route_optimal_rate.tsv"].splitlines()
    assert rows[0].split("\t")[1] == "route_optimal_rate" and len(rows) == 3  # header + 2 evals
    params = deep_merge(params, {"paths": {"eval_reports": str(tmp_path / "eval")}})
    stage = runner.run_evaluation(params, progress=False)["test"]
    for key in ("route_valid_rate", "route_optimal_rate", "exact_accuracy", "accuracy"):
        assert summary["eval"][key] == pytest.approx(stage[key], abs=1e-6), key


def test_route_sums_count_label_routes_and_skip_padding():
    """Predictions equal to the labels are optimal routes, copies of the input are none; padding rows
    (every label ignored) are not counted."""
    import numpy as np
    from routing_layout import paper_cost_model

    from hrm.data import routing, spec
    from hrm.evaluation.metrics import RouteTask, route_sums
    from hrm.training.data import IGNORE_LABEL

    side = 6
    grid = np.full(side * side, spec.ROAD_BASE + 4, dtype=np.int64)  # streets, free
    grid[0], grid[-1] = spec.START, spec.GOAL
    table = paper_cost_model().cost_table()
    solution = routing.solve(routing.cell_costs(grid, table[1]), 0, side * side - 1, side, side)
    label = routing.mark_route(grid, solution.path)
    inputs = torch.tensor(np.stack([grid, grid, grid]), dtype=torch.int32)
    labels = torch.tensor(np.stack([label, label, np.full_like(label, IGNORE_LABEL)]))
    preds = torch.stack([labels[0], inputs[1].long(), labels[0]])
    batch = {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": torch.tensor([1, 1, 0], dtype=torch.int32),
    }
    task = RouteTask(rows=side, cols=side, cost_table=table)
    assert route_sums(batch, preds, task) == {"route_valid_rate": 1.0, "route_optimal_rate": 1.0}


def test_build_model_from_the_datasets_metadata_is_the_one_from_its_sizes(tiny_run_data):
    """One builder for trainer, memory probe and evaluate: the dataset's metadata gives the sizes."""
    from train_helpers import TINY_ARCH

    from hrm.models import build_model
    from hrm.training.data import DatasetMetadata

    meta = DatasetMetadata.from_file(tiny_run_data / "train" / "dataset.json")
    sizes = {k: getattr(meta, k) for k in ("seq_len", "vocab_size", "num_puzzle_identifiers")}
    by_metadata = build_model(TINY_ARCH, meta, batch_size=4, seed=7).state_dict()
    by_sizes = build_model(TINY_ARCH, **sizes, batch_size=4, seed=7).state_dict()
    assert_same_weights(by_metadata, by_sizes)
    with pytest.raises(TypeError, match="needs batch_size and the dataset's metadata"):
        build_model(TINY_ARCH, batch_size=4)
