"""bench/gpu_budget.py end to end on the CPU at toy sizes (the GPU study's code path, not its figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
