"""Outputs that cannot be written are refused before the first step (train) or the first batch (evaluate), with
a message naming the setting and its path; through the stage scripts: exit 1, no traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import tiny_params

import hrm.training.step as step_module
from hrm.io import UserError
from hrm.training import loop
from tests.conftest import REPO

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
OUTPUT_KEYS = ("model", "checkpoints", "train_log", "train_timing")

pytestmark = pytest.mark.usefixtures("one_thread")


def under_a_file(params: dict, key: str, tmp_path: Path) -> str:
    """Point paths.<key> below a plain file (what even root cannot write through); return the new path."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be", encoding="utf-8")
    params["paths"][key] = str(blocker / "inside" / Path(params["paths"][key]).name)
    return params["paths"][key]


@pytest.fixture
def no_steps(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a training step ran before the outputs were checked")

    monkeypatch.setattr(step_module, "train_step", refuse)


def run_stage(stage: str, params: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", f"stages.{stage}", "--params", str(path)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_output_below_a_file_is_refused_before_the_first_step(tiny_run_data, tmp_path, no_steps, key):
    params = tiny_params(tiny_run_data, tmp_path)
    path = under_a_file(params, key, tmp_path)
    folder = Path(path).parent if key in ("model", "train_timing") else Path(path)
    with pytest.raises(UserError) as refused:
        loop.train(params)
    assert str(refused.value) == (
        f"params.yaml: paths.{key} {path}: cannot write in {folder} ({tmp_path / 'blocker'} is a file, not a folder)"
    )


@pytest.mark.skipif(AS_ROOT, reason="root writes into a read-only (0o555) folder anyway")
@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_output_in_a_read_only_folder_is_refused_before_the_first_step(
    tiny_run_data, tmp_path, no_steps, key
):
    params = tiny_params(tiny_run_data, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    params["paths"][key] = str(locked / Path(params["paths"][key]).name)
    try:
        with pytest.raises(UserError, match=rf"paths\.{key} .*locked.*: cannot write in .*Permission denied"):
            loop.train(params)
    finally:
        locked.chmod(0o755)


def test_a_full_disk_is_refused_before_the_first_step(tiny_run_data, tmp_path, no_steps, monkeypatch):
    """The probe writes one block and syncs it: a full disk answers ENOSPC there (simulated: no full disk
    can be made here without privileges)."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    params = tiny_params(tiny_run_data, tmp_path)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"paths\.checkpoints .*: cannot write in .*No space left on device"):
        loop.train(params)
    assert not list(Path(params["paths"]["checkpoints"]).iterdir())  # the probe's file is gone


def test_train_stage_refuses_an_unwritable_model_path_with_exit_1(tiny_run_data, tmp_path):
    params = tiny_params(tiny_run_data, tmp_path)
    path = under_a_file(params, "model", tmp_path)
    result = run_stage("train", params, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: params.yaml: paths.model {path}: cannot write in" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "planned steps" not in result.stdout  # refused before the data was even read


@pytest.mark.skipif(AS_ROOT, reason="root writes into a read-only (0o555) folder anyway")
def test_train_stage_refuses_a_read_only_log_folder_with_exit_1(tiny_run_data, tmp_path):
    params = tiny_params(tiny_run_data, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    params["paths"]["train_log"] = str(locked / "train")
    try:
        result = run_stage("train", params, tmp_path)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 1 and "paths.train_log" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_evaluate_stage_refuses_unwritable_reports_before_evaluating(tiny_run_data, tmp_path):
    """paths.eval_reports is built beside itself and swapped in: a parent that is a file stops the stage at
    once (before, it evaluated every split, then died with a traceback writing the reports)."""
    params = tiny_params(tiny_run_data, tmp_path)
    params["paths"]["eval_reports"] = str(tmp_path / "eval")
    path = under_a_file(params, "eval_reports", tmp_path)
    result = run_stage("evaluate", params, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: params.yaml: paths.eval_reports {path}: cannot write in" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "checkpoint not found" not in result.stderr  # refused before the model was looked for
