"""The budget-curve study of `hrm compare` on one GPU in one call: HRM, TRM and the transformer on the quick
data at a large batch, each one long run with frequent evals, then the same budget report (table + figure).

The device machine has no DVC, so this drives the stages' own functions directly: generate and convert the
quick profile's data once, then for each arch `hrm.training.loop.train` and `hrm.evaluation.runner.run_evaluation`
(for the baselines), and `hrm.budget` for the curves. Settings are params.yaml's `profiles.quick` (and its
`per_arch`) with only these changed: `train.global_batch_size` (default 256), `train.epochs`,
`train.eval_interval`; the lr is the quick profile's (not rescaled for the batch: say so with the results).

Sized for one device call (10 minutes a command): the default 1,200 epochs x 960 groups / 256 = 4,500 steps
per arch (1.15M examples drawn, 50x the quick budget; 6x the CPU budget curves), 24 evals, but each arch's
training is stopped (SIGTERM to itself: the trainer checkpoints, then resumes at that step only to evaluate
and write its weights) when its share of `--deadline-s` is spent: the time left over the archs left, less
EVAL_RESERVE_S for its evaluation. An arch stopped so has fewer evals and says `stopped_by_time`. Not yet run
on a GPU.

Only the reports go to `--out` (results.json, results.md, budget.png: the device tool brings back at most 8
files, 2 folders down); the data, checkpoints and logs go to `--work` (a temporary folder by default).

    python3 bench/gpu_budget.py --out "$OUT/gpu-budget"      # on the device (docs/gpu_check.md has the call)
    PYTHONPATH=$PWD python bench/gpu_budget.py --device cpu --epochs 4 --eval-interval 2 --batch 8 --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import yaml

ARCHS = ("hrm_v1", "trm", "transformer")
DEFAULT_DEADLINE_S = 480.0  # the whole study, data included; the device command's limit is 600 s
EVAL_RESERVE_S = 30.0  # kept from each arch's share for its evaluation and weights


def run_params(out: Path, arch: str, args: argparse.Namespace) -> dict:
    """params.yaml + profiles.quick (+ per_arch) + this study's batch, epochs, device and paths under `out`
    (the work folder)."""
    from hrm.config import load_params
    from hrm.config import run_params as resolve

    run = out / arch
    sets = [
        f"arch.name={arch}",
        f"train.global_batch_size={args.batch}",
        f"train.epochs={args.epochs}",
        f"train.eval_interval={args.eval_interval}",
        f"train.device={args.device}",
        f"paths.raw={out / 'data' / 'raw'}",
        f"paths.hrm={out / 'data' / 'hrm'}",
        f"paths.checkpoints={run / 'checkpoints'}",
        f"paths.model={run / 'model.pt'}",
        f"paths.train_log={run / 'train'}",
        f"paths.train_timing={run / 'timing.json'}",
        f"paths.eval_reports={run / 'eval'}",
    ]
    return resolve(load_params("params.yaml"), "quick", sets)


def make_data(params: dict, out: Path) -> None:
    """The quick data, once (generate + convert through their stage entry points)."""
    from hrm.data.conversion import convert
    from hrm.data.generation import generate

    if (out / "data" / "hrm" / "test" / "dataset.json").is_file():
        return
    path = out / "data" / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    generate.run(path, progress=False)
    convert.run(path)


def train_within(params: dict, limit_s: float) -> int | None:
    """Train; past `limit_s` the process sends itself SIGTERM, the trainer stops after the step with a
    checkpoint, and a second run with train.max_steps at that step (neutral to the checkpoint) evaluates and
    writes the weights. The step it stopped at, or None if it finished."""
    from hrm.training.loop import TrainingInterrupted, train

    # outside the trainer's own handler (set-up, the last step's return) a late SIGTERM must not kill us
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    timer = threading.Timer(limit_s, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        train(params)
        return None
    except TrainingInterrupted as stopped:
        step = int(re.search(r"stopped at step (\d+)", str(stopped)).group(1))
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    train({**params, "train": {**params["train"], "max_steps": step}})
    return step


def study_arch(params: dict, limit_s: float) -> dict:
    """Train one arch (stopped at `limit_s`), evaluate it (baselines), and read its curve with its compute."""
    from hrm.budget import run_baselines, run_curve, segment_flops_of
    from hrm.evaluation.runner import run_evaluation
    from hrm.quickstart import flatten

    started = time.perf_counter()
    stopped_at = train_within(params, limit_s)
    train_s = time.perf_counter() - started
    test = run_evaluation(params, progress=False)["test"]
    paths = params["paths"]

    def read(path: str) -> str | None:
        file = Path(path)
        return file.read_text(encoding="utf-8") if file.is_file() else None

    flops = segment_flops_of(flatten(params))
    curve = run_curve(read, paths["train_log"], int(params["train"]["global_batch_size"]), flops)
    return {
        "curve": curve,
        "baselines": run_baselines(test),
        "train_s": round(train_s, 1),
        "train_limit_s": round(limit_s, 1),
        "stopped_by_time": stopped_at,
        "flops_per_segment": flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1200)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S, help="the whole study")
    parser.add_argument("--work", type=Path, default=None, help="data and runs (default: a temporary folder)")
    args = parser.parse_args()

    from hrm.budget import baselines, group_budget, plot_budget
    from hrm.compare.command import machine
    from hrm.compare.report import budget_table

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-budget-"))
    archs = args.archs.split(",")
    runs, seconds = [], {}
    for index, arch in enumerate(archs):
        params = run_params(work, arch, args)
        make_data(params, work)
        seconds.setdefault("data", round(time.perf_counter() - started, 1))
        left = args.deadline_s - (time.perf_counter() - started)
        limit = max(left / (len(archs) - index) - EVAL_RESERVE_S, 1.0)
        result = study_arch(params, limit)
        runs.append({"arch": arch, "state": "success", **result})
        stopped = (
            f", stopped by time at step {result['stopped_by_time']}" if result["stopped_by_time"] else ""
        )
        print(
            f"{arch}: {len(result['curve'])} evals, train {result['train_s']} s of {limit:.0f}{stopped}",
            flush=True,
        )
    lines = baselines(runs)
    monotone = lines.get("monotone_path", {}).get("route_optimal_rate", {}).get("mean")
    groups = [
        {
            "variant": f"batch {args.batch}",
            "arch": r["arch"],
            "n": 1,
            "budget": group_budget([r["curve"]], monotone),
        }
        for r in runs
    ]
    results = {"machine": machine(), "batch": args.batch, "epochs": args.epochs}
    results.update({"deadline_s": args.deadline_s, "seconds": seconds, "work": str(work)})
    results.update({"baselines": lines, "groups": groups, "runs": runs})
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot_budget(results, args.out / "budget.png")
    header, rows = budget_table(results)
    lines_md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines_md += ["| " + " | ".join(row) + " |" for row in rows]
    (args.out / "results.md").write_text("\n".join(lines_md) + "\n", encoding="utf-8")
    results["seconds"]["total"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"report: {args.out / 'results.md'} ({results['seconds']['total']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
