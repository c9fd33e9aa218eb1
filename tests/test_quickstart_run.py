"""`hrm quickstart` end to end on the tiny profile in a fresh git checkout: Ctrl-C then the same command resumes
from the last checkpoint and ends where an uninterrupted run ends, bit for bit; the verdict and every command it
prints run; `dvc exp show` leads with the route metrics; nothing is left behind."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run, tiny_checkout

# 100 one-batch epochs: long enough to interrupt mid-run, seconds to train.
LONGER = ["--set", "train.epochs=100", "--set", "train.eval_interval=50"]


def _hrm(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "hrm.cli", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)


def _interrupt_mid_training(args: list[str], root: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Start the quickstart, then press Ctrl-C (SIGINT to its process group) once the trainer has logged steps."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "hrm.cli", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    summary = root / ".dvc" / "tmp" / "quickstart" / name / "reports" / "train" / "metrics.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(summary.read_text())["step"] >= 5:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    out, _ = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkout(tmp_path_factory.mktemp("quickstart"))


def test_ctrl_c_resumes_then_the_verdict_and_every_printed_command_work(checkout: Path) -> None:
    args = ["quickstart", "--profile", "tiny", *LONGER, "--name", "stopped"]
    stopped = _interrupt_mid_training(args, checkout, "stopped")
    assert stopped.returncode == 130, stopped.stdout[-3000:]
    assert "the same command resumes from the last checkpoint" in stopped.stdout
    assert "Traceback" not in stopped.stdout
    assert any((checkout / ".dvc/tmp/quickstart/stopped/checkpoints").iterdir())

    resumed = _hrm(args, checkout)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the run in" in resumed.stdout
    resumed_at = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "resuming from" in line]
    assert resumed_at and "(step 0)" not in resumed_at[0], resumed_at

    # the verdict: the result, the baselines, and what the result means
    out = resumed.stdout
    assert "result: HRM (hrm_v1) test route optimal" in out
    assert "baselines (no model): best monotone path" in out
    assert "not HRM's claim" in out  # a tiny run learns nothing: the verdict must say so
    hints = out.split("\nnext:\n", 1)[1].splitlines()
    commands = [line.split("    # ", 1)[0].strip() for line in hints if line.startswith("  ")]
    assert len(commands) == 3 and commands[0].startswith(
        "hrm quickstart --profile tiny --set train.epochs=100"
    )
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "hrm":
            result = _hrm(argv[1:], checkout)
        else:
            result = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert "failed to load" not in result.stdout + result.stderr, command
        if argv[:3] == ["dvc", "metrics", "diff"]:
            assert "test_route_optimal_rate" in result.stdout and "stopped-transformer" in result.stdout

    # `dvc exp show` leads with the answer: the route metrics within its first 20 columns
    header = run(["dvc", "exp", "show", "--csv"], checkout).splitlines()[0].split(",")
    assert "test_route_optimal_rate" in header[:20] and "baseline_monotone_route_optimal_rate" in header[:20]

    # bit for bit what an uninterrupted run gives
    straight = _hrm(["quickstart", "--profile", "tiny", *LONGER, "--name", "straight"], checkout)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    reports = checkout / "reports" / "experiments"
    assert (reports / "stopped" / "metrics.json").read_bytes() == (
        reports / "straight" / "metrics.json"
    ).read_bytes()

    # nothing left behind: no run folder, no extra worktree, one experiment per name, none stuck at Running
    assert not any((checkout / ".dvc/tmp/quickstart").iterdir())
    assert run(["git", "worktree", "list", "--porcelain"], checkout).count("worktree ") == 1
    shown = json.loads(run(["dvc", "exp", "show", "--json"], checkout))
    names = [e["name"] for row in shown for e in (row.get("experiments") or [])]
    assert sorted(names) == ["stopped", "stopped-transformer", "straight"]
    assert "Running" not in run(["dvc", "exp", "show", "--no-pager"], checkout)


def test_uncommitted_changes_are_refused_before_any_work(checkout: Path) -> None:
    (checkout / "params.yaml").write_text((checkout / "params.yaml").read_text() + "\n# edited\n")
    try:
        result = _hrm(["quickstart", "--profile", "tiny", "--name", "dirty"], checkout)
    finally:
        run(["git", "checkout", "--", "params.yaml"], checkout)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "uncommitted changes: params.yaml" in result.stderr and "git stash -u" in result.stderr
    assert not (checkout / ".dvc/tmp/quickstart/dirty").exists()
