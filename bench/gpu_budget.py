"""The budget-curve study of `hrm compare` on one GPU in one call: HRM, TRM and the transformer on the quick
data at a large batch, each one long run with frequent evals, then the same budget report (table + figure).

The device machine has no DVC, so this drives the stages' own functions directly: generate and convert the
quick profile's data once, then for each arch `hrm.training.loop.train` and `hrm.evaluation.runner.run_evaluation`
(for the baselines), and `hrm.budget` for the curves. Settings are params.yaml's `profiles.quick` (and its
`per_arch`) with only these changed: `train.global_batch_size` (default 256), `train.epochs`,
`train.eval_interval`; the lr is the quick profile's (not rescaled for the batch: say so with the results).

Sized for the device's 15 minutes: the default 1,200 epochs x 960 groups / 256 = 4,500 steps per arch
(1.15M examples drawn, 50x the quick budget; 6x the CPU budget curves), 24 evals. Not yet run on a GPU.

    python bench/gpu_budget.py --out "$OUT/gpu-budget"               # on the device (see docs/device-check.md)
    PYTHONPATH=$PWD python bench/gpu_budget.py --device cpu --epochs 4 --eval-interval 2 --batch 8 --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ARCHS = ("hrm_v1", "trm", "transformer")


def run_params(out: Path, arch: str, args: argparse.Namespace) -> dict:
    """params.yaml + profiles.quick (+ per_arch) + this study's batch, epochs, device and paths under `out`."""
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


def study_arch(params: dict) -> dict:
    """Train one arch, evaluate it (baselines), and read its curve with its compute."""
    from hrm.budget import run_baselines, run_curve, segment_flops_of
    from hrm.evaluation.runner import run_evaluation
    from hrm.quickstart import flatten
    from hrm.training.loop import train

    started = time.perf_counter()
    train(params)
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
    args = parser.parse_args()

    from hrm.budget import baselines, group_budget, plot_budget
    from hrm.compare import budget_table, machine

    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for arch in args.archs.split(","):
        params = run_params(args.out, arch, args)
        make_data(params, args.out)
        result = study_arch(params)
        runs.append({"arch": arch, "state": "success", **result})
        print(f"{arch}: {len(result['curve'])} evals, train {result['train_s']} s", flush=True)
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
    results.update({"baselines": lines, "groups": groups, "runs": runs})
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot_budget(results, args.out / "budget.png")
    header, rows = budget_table(results)
    lines_md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines_md += ["| " + " | ".join(row) + " |" for row in rows]
    (args.out / "results.md").write_text("\n".join(lines_md) + "\n", encoding="utf-8")
    print(f"report: {args.out / 'results.md'}", flush=True)


if __name__ == "__main__":
    main()
