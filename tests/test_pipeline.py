"""End to end: `dvc repro` of the tiny profile in a fresh git + DVC repo, every stage's outputs checked,
then an experiment compared with `dvc metrics diff` (the route metrics must show)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import GIT, run, tiny_checkout

from hrm.data import spec


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout's files with the tiny profile applied, committed, after `dvc repro`."""
    root = tiny_checkout(tmp_path_factory.mktemp("pipeline"))
    run(["dvc", "repro"], root)
    return root


def test_every_stage_writes_its_outputs(tiny_repo: Path) -> None:
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text(encoding="utf-8"))
    gen, paths = params["generate"], params["paths"]
    n_train, n_test = 4 * gen["train_bases"], 4 * gen["test_bases"]

    raw = tiny_repo / paths["raw"]
    assert sorted(p.name for p in raw.iterdir()) == sorted(spec.raw_file_names())
    summary = json.loads((raw / spec.RAW_SUMMARY_FILE).read_text(encoding="utf-8"))
    assert (
        summary["counts"]["train"]["examples"] == n_train and summary["counts"]["test"]["examples"] == n_test
    )

    import numpy as np

    hrm_data = tiny_repo / paths["hrm"]
    assert json.loads((hrm_data / "identifiers.json").read_text()) == [
        "<blank>",
        "bike",
        "car",
        "van",
        "truck",
    ]
    seq_len = gen["rows"] * gen["cols"]
    for split, count in (("train", n_train), ("test", n_test)):
        meta = json.loads((hrm_data / split / "dataset.json").read_text())
        assert meta["seq_len"] == seq_len and meta["total_groups"] == count // 4
        assert np.load(hrm_data / split / "all__inputs.npy").shape == (count, seq_len)

    compliance = json.loads((tiny_repo / paths["data_reports"] / "compliance.json").read_text())
    assert compliance["score"] >= params["validate"]["threshold"] and compliance["critical_failures"] == 0

    import torch

    weights = torch.load(tiny_repo / paths["model"], weights_only=True)
    assert "model.inner.lm_head.weight" in weights and "model.inner.puzzle_emb.weights" in weights
    assert (tiny_repo / paths["train_log"] / "metrics.json").exists()

    reports = tiny_repo / paths["eval_reports"]
    metrics = json.loads((reports / "metrics.json").read_text())
    for key in ("exact_accuracy", "accuracy", "route_valid_rate", "route_optimal_rate"):
        assert 0.0 <= metrics["test"][key] <= 1.0
    assert metrics["test"]["count"] == n_test
    assert metrics["test"]["copy_input"]["route_valid_rate"] == 0.0
    html = (reports / "index.html").read_text(encoding="utf-8")
    assert "<img" in html and "http://" not in html and "https://" not in html

    status = run(["dvc", "status"], tiny_repo)
    assert "changed" not in status, status


def test_experiment_shows_in_metrics_diff(tiny_repo: Path) -> None:
    run([*GIT, "add", "-A"], tiny_repo)
    run([*GIT, "commit", "-qm", "tiny run"], tiny_repo)
    run(["dvc", "exp", "run", "--temp", "-n", "lr-up", "-S", "train.lr=0.001"], tiny_repo)
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text(encoding="utf-8"))
    assert params["train"]["lr"] != 0.001  # the workspace keeps its params
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "lr-up", "--all", "--json"], tiny_repo))
    eval_metrics = diff[f"{params['paths']['eval_reports']}/metrics.json"]
    assert "test.route_optimal_rate" in eval_metrics and "test.bike.route_valid_rate" in eval_metrics


def test_typo_in_dvc_exp_run_stops_before_any_work(tiny_repo: Path) -> None:
    """`-S train.global_batchsize=384`: DVC 3 refuses a new key itself; with `+` (the form it suggests, and
    what older DVC did silently) the key reaches params.yaml and the first stage to run stops on the schema."""
    env = {**os.environ, "PYTHONPATH": str(tiny_repo)}
    model = (
        tiny_repo / yaml.safe_load((tiny_repo / "params.yaml").read_text(encoding="utf-8"))["paths"]["model"]
    )
    before = (model.read_bytes(), (tiny_repo / "params.yaml").read_bytes())
    for setting in ("train.global_batchsize=384", "+train.global_batchsize=384"):
        result = subprocess.run(
            ["dvc", "exp", "run", "--temp", "-n", "typo", "-S", setting],
            cwd=tiny_repo,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    assert (
        "train.global_batchsize: unknown key; did you mean train.global_batch_size?"
        in result.stderr + result.stdout
    )
    assert (model.read_bytes(), (tiny_repo / "params.yaml").read_bytes()) == before
