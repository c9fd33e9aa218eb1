"""bench/gpu_budget.py end to end on the CPU at toy sizes (the GPU study's code path, not its figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_budget_runs_on_cpu_and_reports_the_compute_of_every_eval(tmp_path):
    out = tmp_path / "budget"
    command = [sys.executable, "bench/gpu_budget.py", "--device", "cpu", "--archs", "transformer"]
    command += ["--epochs", "2", "--eval-interval", "1", "--batch", "64", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (run,) = results["runs"]
    steps = [p["step"] for p in run["curve"]]
    assert steps == [15, 30]  # 2 epochs x 960 groups / 64, an eval per epoch
    assert all(
        p["segments"] == p["step"] * 64 and p["flops"] == p["segments"] * run["flops_per_segment"]
        for p in run["curve"]
    )
    assert results["baselines"]["monotone_path"]["route_optimal_rate"]["mean"] > 0
    assert (out / "budget.png").read_bytes()[:4] == b"\x89PNG" and "first >= 20%" in (
        out / "results.md"
    ).read_text()
    # only the reports under --out (the device tool brings back at most 8 files, 2 folders down)
    assert sorted(p.name for p in out.rglob("*")) == ["budget.png", "results.json", "results.md"]
    assert run["stopped_by_time"] is None and results["seconds"]["total"] > 0


def load_gpu_budget():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_budget", REPO / "bench" / "gpu_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_arch_past_its_time_is_stopped_then_finished_at_that_step(monkeypatch):
    """The study fits its call: past the limit the trainer gets SIGTERM (it checkpoints and stops), then one
    more run with train.max_steps at that step writes the weights; a run inside the limit is left alone."""
    import time

    from hrm.training import loop

    calls = []

    def fake_train(params):
        calls.append(params["train"].get("max_steps"))
        if len(calls) > 1:
            return {}
        with loop.stop_signals() as received:
            for _ in range(500):
                if received["signum"] is not None:
                    raise loop.TrainingInterrupted("stopped at step 7; checkpoint x.", received["signum"])
                time.sleep(0.01)
        raise AssertionError("no SIGTERM within 5 s")

    monkeypatch.setattr(loop, "train", fake_train)
    budget = load_gpu_budget()
    assert budget.train_within({"train": {"max_steps": 0}}, 0.2) == 7
    assert calls == [0, 7]
    calls.clear()
    monkeypatch.setattr(loop, "train", lambda params: calls.append("done") or {})
    assert budget.train_within({"train": {}}, 0.05) is None and calls == ["done"]
    time.sleep(0.2)  # the timer was cancelled: no late SIGTERM (pytest would die of it)
