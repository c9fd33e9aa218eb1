"""Budget curves: what a run scored on the test split against the training compute it had spent to get there.

With a constant learning rate after warmup (`train.lr_min_ratio: 1.0`, the paper's) one long run that evaluates
often gives the whole curve: its eval at step t is a run of budget t. Three compute axes, each exact for the run:
samples (examples started: the global batch at step 1 plus every row that halted before, train/count; HRM and TRM
spend several ACT segments on one example, the transformer one), segments (step x global batch: each step runs one
segment of every row) and FLOPs (segments x `hrm.models.flops.segment_flops` of the architecture that ran).
Baselines (best monotone path, vehicle-blind, copy the input) are the runs' own evaluate-stage metrics.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hrm.evaluation.metrics import EXACT, METRICS, ROUTE_OPTIMAL, TOKEN

CURVE_METRICS = tuple((name, METRICS[name].label) for name in (ROUTE_OPTIMAL, EXACT, TOKEN))
AXES = (("samples", "examples started"), ("segments", "row-segments run"), ("flops", "training FLOPs"))
BASELINES = (
    ("monotone_path", "best monotone path"),
    ("vehicle_blind", "vehicle-blind"),
    ("copy_input", "copy the input"),
)
LEVELS = (0.2, 0.5)  # route-optimal levels whose first crossing is reported, with the monotone baseline's


def segment_flops_of(flat_params: dict[str, Any]) -> float:
    """Training FLOPs of one row-segment of the run whose flat params.yaml (dvc exp show) these are, with the
    data facts convert writes for its generate settings (`convert.metadata_for_settings`)."""
    from hrm.data.conversion.convert import metadata_for_settings
    from hrm.models.config import ModelConfig
    from hrm.models.flops import segment_flops

    arch = {k.removeprefix("arch."): v for k, v in flat_params.items() if k.startswith("arch.")}
    arch["forward_dtype"] = "float32"  # the count does not depend on it; "auto" would ask for a device
    generate = {k: flat_params[f"generate.{k}"] for k in ("rows", "cols", "vehicles", "train_bases")}
    metadata = metadata_for_settings(generate)
    sizes = {k: metadata[k] for k in ("seq_len", "vocab_size", "num_puzzle_identifiers")}
    return segment_flops(ModelConfig.from_arch(arch, batch_size=1, **sizes)).total


def run_curve(
    read: Callable[[str], str | None], train_log: str, global_batch_size: int, flops_per_segment: float
) -> list[dict[str, Any]]:
    """The eval points of one run with their compute. `read(path)` gives a dvclive file's text or None."""
    from hrm.evaluation.plots import tsv_points

    def tsv(name: str, column: str) -> dict[int, float] | None:
        text = read(f"{train_log}/plots/metrics/{name}.tsv")
        return dict(tsv_points(text, column)) if text else None

    metrics = {key: tsv(f"eval/{key}", key) for key, _ in CURVE_METRICS}
    metrics = {key: points for key, points in metrics.items() if points is not None}
    counts = tsv("train/count", "count")
    points = []
    for step in sorted(set().union(*(m.keys() for m in metrics.values()))):
        # rows that halted at step s start new examples at step s + 1
        started = (
            None if counts is None else global_batch_size + sum(v for s, v in counts.items() if s < step)
        )
        point = {"step": step, "samples": started, "segments": step * global_batch_size}
        point["flops"] = point["segments"] * flops_per_segment
        point.update({key: metrics.get(key, {}).get(step) for key, _ in CURVE_METRICS})
        points.append(point)
    return points


def mean_curve(curves: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per step that every curve has: each compute axis and metric as the mean over runs, plus `<metric>_sd`."""
    if not curves:
        return []
    common = sorted(set.intersection(*({p["step"] for p in c} for c in curves)))
    by_step = [{p["step"]: p for p in c} for c in curves]
    out = []
    for step in common:
        point: dict[str, Any] = {"step": step}
        for key in [k for k, _ in AXES] + [k for k, _ in CURVE_METRICS]:
            values = [c[step][key] for c in by_step if c[step].get(key) is not None]
            point[key] = statistics.fmean(values) if values else None
            if key in dict(CURVE_METRICS):
                point[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(point)
    return out


def first_reach(curve: Sequence[dict[str, Any]], level: float, metric: str = ROUTE_OPTIMAL):
    """The first point at which `metric` >= `level`, or None within the curve."""
    return next((p for p in curve if p.get(metric) is not None and p[metric] >= level), None)


def run_baselines(test: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One run's baseline rates from its evaluate-stage test metrics (metrics.json's `test`)."""
    return {
        key: {k: test[key][k] for k in (ROUTE_OPTIMAL, TOKEN) if k in test[key]}
        for key, _ in BASELINES
        if isinstance(test.get(key), dict)
    }


def baselines(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each baseline's test rates over the successful runs' own metrics (mean, and min/max: equal on one data)."""
    out = {}
    for key, label in BASELINES:
        for metric in (ROUTE_OPTIMAL, TOKEN):
            values = [
                r["baselines"][key][metric] for r in runs if metric in r.get("baselines", {}).get(key, {})
            ]
            if values:
                entry = out.setdefault(key, {"label": label, "runs": len(values)})
                entry[metric] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    return out


def group_budget(curves: Sequence[Sequence[dict[str, Any]]], monotone: float | None) -> dict[str, Any]:
    """One arch's budget summary: the mean curve, its end, and where it (and each seed) first reaches each level."""
    from hrm.models.flops import FORMULA  # imports torch: only here

    mean = mean_curve(curves)
    levels = [(f"{int(100 * v)}%", v) for v in LEVELS]
    if monotone is not None:
        levels.append(("monotone baseline", monotone))
    reach = {
        name: {
            "level": value,
            "mean": first_reach(mean, value),
            "seeds": [first_reach(c, value) for c in curves],
        }
        for name, value in levels
    }
    return {"curve": mean, "last": mean[-1] if mean else None, "reach": reach, "formula": FORMULA}


def baseline_lines(lines: dict[str, dict[str, Any]], metric: str) -> dict[float, str]:
    """The dashed lines of one panel, value -> label (baselines of equal value share a line): every baseline on
    route optimal, copy-the-input on token accuracy, none on exact."""
    wanted = ROUTE_OPTIMAL if metric == ROUTE_OPTIMAL else TOKEN
    shown: dict[float, list[str]] = {}
    for key, entry in lines.items():
        if metric != EXACT and wanted in entry and (metric != TOKEN or key == "copy_input"):
            shown.setdefault(entry[wanted]["mean"], []).append(entry["label"])
    return {value: " = ".join(labels) + f" {100 * value:.1f}%" for value, labels in shown.items()}


def plot_budget(results: dict[str, Any], path: Path) -> bool:
    """Metrics (rows) against each compute axis (columns): mean over seeds, a ± sd band, baselines dashed."""
    from hrm.evaluation.plots import new_figure, save_figure

    groups = [g for g in results["groups"] if g.get("budget", {}).get("curve")]
    if not groups:
        return False
    plt, fig = new_figure(12.0, 9.0)
    axes = fig.subplots(len(CURVE_METRICS), len(AXES), squeeze=False)
    lines = results.get("baselines", {})
    for row, (metric, metric_label) in enumerate(CURVE_METRICS):
        for col, (axis, axis_label) in enumerate(AXES):
            ax = axes[row][col]
            drawn = False
            for group in groups:
                curve = [p for p in group["budget"]["curve"] if p[axis] is not None and p[metric] is not None]
                xs, ys = [p[axis] for p in curve], [p[metric] for p in curve]
                sds = [p[f"{metric}_sd"] or 0.0 for p in curve]
                (line,) = ax.plot(xs, ys, label=f"{group['arch']} (n={group['n']})")
                drawn = drawn or bool(xs)
                low, high = ([y + sign * s for y, s in zip(ys, sds, strict=True)] for sign in (-1, 1))
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
            for value, label in baseline_lines(lines, metric).items():
                ax.axhline(value, linestyle="--", linewidth=0.8, color="grey")
                ax.annotate(label, (0.01, value), fontsize=6, xycoords=("axes fraction", "data"), va="bottom")
            if axis == "flops" and drawn:
                ax.set_xscale("log")
            ax.set_xlabel(axis_label, fontsize=8)
            ax.set_ylabel(f"test {metric_label}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    save_figure(plt, fig, path)
    return True
