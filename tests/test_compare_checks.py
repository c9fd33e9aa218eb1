"""`hrm compare` checks every run before it queues one and fails loudly: an impossible variant stops before
`dvc exp run --queue`, a failed run makes the exit non-zero, `--jobs` is bounded, `--rev` that finds nothing
says so, progress counts only this call's queue entries, and every command it shows pastes into a shell.
DVC and git are faked, as in tests/test_compare.py."""

from __future__ import annotations

import shlex
import subprocess
from collections import Counter

import pytest
from typer.testing import CliRunner

from hrm.cli import app
from hrm.compare import command, dvc
from hrm.compare.plan import Planned, plan
from hrm.config import load_params
from hrm.io import UserError
from hrm.quickstart import set_param_args
from tests.conftest import REPO

ARCHS = ["hrm_v1", "transformer"]


@pytest.fixture
def faked_dvc(tmp_path, monkeypatch) -> list[list[str]]:
    """A folder with the repo's params.yaml as the working directory; every git/DVC command compare would run
    is recorded (and answered as an empty, clean repository) instead of run."""
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    monkeypatch.chdir(tmp_path)
    commands: list[list[str]] = []

    def fake_cmd(command, check=True):
        commands.append(list(command))
        return subprocess.CompletedProcess(command, 0, stdout="[]", stderr="")

    monkeypatch.setattr(dvc, "_cmd", fake_cmd)
    monkeypatch.setattr(
        dvc, "check_repository", lambda out_dir: commands.append(["git", "status"]) or "a" * 40
    )
    monkeypatch.setattr(dvc, "start_workers", lambda jobs: commands.append(["dvc", "queue", "start"]))
    monkeypatch.setattr(dvc, "queue_status", lambda: ({}, 0))
    monkeypatch.setattr("hrm.compare.plan.known_archs", lambda: ["hrm_v1", "transformer", "trm"])
    return commands


def queued(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[:4] == ["dvc", "exp", "run", "--queue"]]


def test_an_impossible_variant_exits_1_before_anything_is_queued(faked_dvc):
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--profile",
            "quick",
            "--seeds",
            "3",
            "--set",
            "train.lr=1e-3",
            "--set",
            "train.epochs=2",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "train.eval_interval 12 must divide train.epochs 2" in result.output
    assert "nothing was queued" in result.output and "cmp-quick-hrm_v1-s0-v" in result.output
    assert "Traceback" not in result.output
    assert faked_dvc == []  # not even git or `dvc exp show` was asked


def test_every_variant_is_checked_not_only_the_first(faked_dvc):
    result = CliRunner().invoke(
        app, ["compare", "--profile", "quick", "--set", "arch.num_heads=4", "--set", "arch.num_heads=3"]
    )
    assert result.exit_code == 1 and "arch.num_heads must divide hidden_size" in result.output
    assert queued(faked_dvc) == []


def test_the_readmes_example_queues_floats(faked_dvc):
    params = load_params("params.yaml")
    runs = plan(
        params,
        profile="quick",
        archs=ARCHS,
        seeds=3,
        sets=["train.lr=1e-3", "train.lr=5e-4"],
        available_archs=ARCHS,
    )
    assert len(runs) == 12 and {r.overrides["train.lr"] for r in runs} == {1e-3, 5e-4}
    args = set_param_args(runs[0].overrides)
    assert "-Strain.lr=0.001" in args or "-Strain.lr=0.0005" in args


def test_an_arch_typo_suggests_the_arch_meant():
    with pytest.raises(UserError, match="unknown arch hrm .*did you mean hrm_v1"):
        plan(
            load_params(REPO / "params.yaml"), profile="quick", archs=["hrm"], seeds=1, available_archs=ARCHS
        )


@pytest.mark.parametrize("jobs", ["0", "99"])
def test_jobs_is_bounded_by_the_cores(faked_dvc, monkeypatch, jobs):
    monkeypatch.setattr(command.os, "cpu_count", lambda: 2)
    result = CliRunner().invoke(app, ["compare", "--profile", "quick", "--jobs", jobs])
    assert result.exit_code == 1
    assert f"--jobs {jobs}: must be in [1, 2] (this machine's 2 CPU cores" in result.output
    assert faked_dvc == []


def test_rev_with_nothing_found_says_so(faked_dvc, monkeypatch):
    monkeypatch.setattr(dvc, "resolve_rev", lambda rev: "b" * 40)
    monkeypatch.setattr(dvc, "params_at", lambda rev: load_params("params.yaml"))
    result = CliRunner().invoke(app, ["compare", "--profile", "quick", "--seeds", "1", "--rev", "old"])
    assert result.exit_code == 1
    assert (
        "--rev old: none of the 2 planned experiments (cmp-quick-hrm_v1-s0, ...) was run from commit"
        in result.output
    )
    assert "already queued" not in result.output and queued(faked_dvc) == []


def fake_results(states: dict[str, str]) -> dict:
    runs = [
        {"name": name, "state": state, "error": None if state == "success" else f"error: {name} broke"}
        for name, state in states.items()
    ]
    return {"runs": runs}


def test_a_failed_run_makes_the_command_fail_naming_it(faked_dvc, monkeypatch):
    results = fake_results({"cmp-quick-hrm_v1-s0": "success", "cmp-quick-hrm_v1-s1": "failed"})
    monkeypatch.setattr(command, "compare", lambda **kwargs: results)
    result = CliRunner().invoke(app, ["compare", "--profile", "quick"])
    assert result.exit_code == 1
    assert "1 of 2 runs did not succeed (report: reports/compare/index.html)" in result.output
    assert "cmp-quick-hrm_v1-s1: failed: error: cmp-quick-hrm_v1-s1 broke" in result.output
    assert "cmp-quick-hrm_v1-s0:" not in result.output
    command.check_all_succeeded(fake_results({"a": "success"}), "out")  # all succeeded: no error


def test_progress_counts_only_this_calls_queue_entries(monkeypatch, capsys):
    """An earlier call's failure of the same name (or another commit's) is not this call's."""
    answers = iter(
        [
            ({"a": ["Failed"], "b": ["Success"]}, 0),  # before queueing: earlier calls' finished entries
            ({"a": ["Failed", "Queued"], "b": ["Success"]}, 0),  # after queueing a
            ({"a": ["Failed", "Running"], "b": ["Success"]}, 1),
            ({"a": ["Failed", "Success"], "b": ["Success"]}, 1),
        ]
    )
    monkeypatch.setattr(dvc, "queue_status", lambda: next(answers))
    monkeypatch.setattr(dvc, "start_workers", lambda jobs: None)
    monkeypatch.setattr(
        dvc, "_cmd", lambda command, check=True: subprocess.CompletedProcess(command, 0, "", "")
    )
    monkeypatch.setattr(dvc.time, "sleep", lambda s: None)
    run = Planned("a", "hrm_v1", 0, None, (), {"train.seed": 0})
    dvc.run_queue([run], {"a", "b"}, jobs=1, poll_s=0.0)
    out = capsys.readouterr().out
    assert "queue: 1 running" in out and "queue: 1 success" in out
    assert "failed" not in out and "2 success" not in out
    assert dvc.finished_entries({"a": ["Failed", "Running"], "c": ["Success"]}, {"a"}) == Counter(
        {("a", "Failed"): 1}
    )


def test_commands_compare_shows_paste_into_a_shell(monkeypatch):
    command = ["dvc", "exp", "run", "--queue", "-n", "x", "-Sgenerate.city.avenue_spacing=[3, 5]"]
    monkeypatch.setattr(
        dvc.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(command, 1, "", "ERROR: no")
    )
    with pytest.raises(UserError) as caught:
        dvc._cmd(command)
    shown = str(caught.value).split("`")[1]
    assert shlex.split(shown) == command
    run = Planned("x", "hrm_v1", 0, None, (("generate.city.avenue_spacing", [3, 5]),), {})
    assert shlex.split(run.variant_label) == ["generate.city.avenue_spacing=[3, 5]"]


def test_a_refused_queue_shows_the_pasteable_command(monkeypatch):
    monkeypatch.setattr(
        dvc, "_cmd", lambda command, check=True: subprocess.CompletedProcess(command, 1, "", "ERROR: refused")
    )
    monkeypatch.setattr(dvc, "queue_status", lambda: ({}, 0))
    run = Planned("x", "hrm_v1", 0, None, (), {"generate.city.avenue_spacing": [3, 5]})
    with pytest.raises(UserError) as caught:
        dvc.run_queue([run], {"x"}, jobs=1, poll_s=0.0)
    shown = str(caught.value).split("(", 1)[1].split("):", 1)[0]
    assert shlex.split(shown)[-1] == "-Sgenerate.city.avenue_spacing=[3, 5]"


def test_a_retried_run_that_failed_again_shows_its_own_error():
    def failed(error: str, when: str) -> dict:
        data = {"timestamp": when, "params": {}, "metrics": {}}
        return {
            "executor": {"state": "failed", "local": {"log": None}},
            "name": "x",
            "revs": [{"rev": when, "name": "x", "error": {"msg": error}, "data": data}],
        }

    shown = [
        {
            "rev": "b" * 40,
            "experiments": [failed("old", "2026-01-01T00:00:00"), failed("new", "2026-02-01T00:00:00")],
        }
    ]
    assert [e.error for e in dvc.parse_exp_show(shown, "b" * 40)["x"]] == ["new", "old"]
