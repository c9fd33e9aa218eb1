"""The numbers of a comparison: one record per run, read from its experiment's own files (test metrics, timing,
eval curve), and mean, sample sd, min and max of each metric per (variant, arch), overall and per vehicle."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from hrm.budget import group_budget, run_baselines, run_curve, segment_flops_of
from hrm.compare import dvc
from hrm.compare.dvc import Experiment
from hrm.compare.plan import Planned
from hrm.evaluation import metrics as M

# (metric key under test.*, label); ACT steps = mean segment where the Q-head would halt.
METRICS = tuple(
    (name, M.METRICS[name].label) for name in (M.ROUTE_OPTIMAL, M.ROUTE_VALID, M.EXACT, M.TOKEN, M.STEPS)
)
TIMING = (("wall_s", "train wall s"), ("steps_per_s", "train steps/s"))
RATES = {M.ROUTE_OPTIMAL, M.ROUTE_VALID, M.EXACT, M.TOKEN}


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample sd (n - 1; None for one value), min, max."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def _numbers(values: dict[str, Any], keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {k: values[k] for k, _ in keys if isinstance(values.get(k), int | float)}


def _describe_each(rows: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """`describe` of each key over the rows that have it."""
    return {k: describe([row[k] for row in rows if k in row]) for k, _ in keys}


def vehicle_names(params: dict[str, Any]) -> list[str]:
    """generate.vehicles' names, in params order (the per-vehicle columns)."""
    return [v["name"] for v in params.get("generate", {}).get("vehicles", []) if isinstance(v, dict)]


def run_record(
    run: Planned, experiment: Experiment | None, paths: dict[str, Any], vehicles: Sequence[str], reused: bool
) -> dict[str, Any]:
    """One row of results.json: identity, state, and the numbers read from the experiment's own files."""
    record: dict[str, Any] = {
        "name": experiment.name if experiment else run.name,
        "planned_name": run.name,
        "arch": run.arch,
        "seed": run.seed,
        "data_seed": run.data_seed,
        "variant": run.variant_label,
        "state": experiment.state if experiment else "missing",
        "rev": experiment.rev if experiment else None,
        "reused": reused,
        "error": experiment.error if experiment else "no experiment found (queue entry removed?)",
        "metrics": {},
        "vehicles": {},
        "timing": {},
    }
    if experiment is None or experiment.state != "success":
        return record
    eval_file = f"{paths['eval_reports']}/metrics.json"
    test = experiment.metrics.get(eval_file, {}).get("test")
    if not isinstance(test, dict):
        record["state"] = "failed"
        record["error"] = f"the experiment has no {eval_file} test metrics"
        return record
    record["metrics"] = _numbers(test, METRICS)
    record["vehicles"] = {v: _numbers(test[v], METRICS) for v in vehicles if isinstance(test.get(v), dict)}
    record["timing"] = _numbers(experiment.metrics.get(str(paths.get("train_timing", "")), {}), TIMING)
    record["baselines"] = run_baselines(test)
    record["compute"] = {
        "global_batch_size": int(experiment.params["train.global_batch_size"]),
        "flops_per_segment": segment_flops_of(experiment.params),
    }
    return record


def collect(
    runs: Sequence[Planned],
    found: dict[str, list[Experiment]],
    params: dict[str, Any],
    reused: set[str],
    curves: bool = True,
) -> list[dict[str, Any]]:
    """One record per run (`run_record`), with its eval curve; a finished experiment whose params are not the
    plan's counts as failed."""
    paths, vehicles = params.get("paths", {}), vehicle_names(params)
    records = []
    for run in runs:
        experiment = (found.get(run.name) or [None])[0]
        if experiment is not None and experiment.state == "success":
            differ = dvc.params_differ(params, run, experiment)
            if differ:
                error = f"params differ from the plan: {', '.join(differ[:5])}"
                experiment = dataclasses.replace(experiment, state="failed", metrics={}, error=error)
        record = run_record(run, experiment, paths, vehicles, reused=run.name in reused)
        record["curve"] = []
        if curves and record["state"] == "success":
            record["curve"] = run_curve(
                dvc.git_reader(record["rev"]), paths["train_log"], **record["compute"]
            )
        records.append(record)
    return records


def group_stats(
    records: Sequence[dict[str, Any]],
    vehicles: Sequence[str],
    monotone_baseline: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per (variant, arch): stats of every metric over its successful runs, overall and per vehicle, and the
    budget summary of their eval curves (levels: 20%, 50% and `monotone_baseline`'s route-optimal rate)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["variant"], record["arch"]), []).append(record)
    out = []
    for (variant, arch), members in groups.items():
        ok = [r for r in members if r["state"] == "success"]
        stats = _describe_each([{**r["metrics"], **r["timing"]} for r in ok], [*METRICS, *TIMING])
        per_vehicle = {v: _describe_each([r["vehicles"].get(v, {}) for r in ok], METRICS) for v in vehicles}
        monotone = (monotone_baseline or {}).get(M.ROUTE_OPTIMAL, {}).get("mean")
        out.append(
            {
                "variant": variant,
                "arch": arch,
                "n": len(ok),
                "budget": group_budget([r["curve"] for r in ok if r.get("curve")], monotone),
                "failed": [r["name"] for r in members if r["state"] != "success"],
                "experiments": [{"name": r["name"], "rev": r["rev"]} for r in ok],
                "stats": stats,
                "vehicles": per_vehicle,
            }
        )
    return out
