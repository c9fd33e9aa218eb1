"""Running a checkpoint over a split segment by segment, and turning its predictions into metrics.

HRM evaluates with a fixed number of ACT segments (`halt_max_steps`): in eval mode the Q-head never stops a row
early. We keep the predictions after selected segments (accuracy vs segments) and replay what the Q-head would
have done: a row halts at the first segment where the model's training rule says so (HRM: q_halt > q_continue;
TRM: q_halt > 0), so "steps used vs accuracy" needs no second pass.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hrm.evaluation import metrics as M
from hrm.evaluation import plots, report
from hrm.evaluation.data import SplitData, load_identifier_names, load_route_task, load_split
from hrm.evaluation.loop import run_batches
from hrm.io import (
    UserError,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    check_writable,
    staged_directory,
)

# Metric keys a vehicle name may not take, or it would overwrite a split-level entry.
RESERVED_KEYS = {
    *"segments q_halt copy_input labels count detour monotone monotone_path vehicle_blind".split(),
    *M.METRICS,
}
# The headline metrics file under paths.eval_reports (`headline`).
HEADLINE_FILE = "headline.json"
# The vehicle whose optimal route the vehicle-blind baseline gives every example.
BLIND_VEHICLE = "car"


@dataclass
class SegmentRun:
    """What one pass of `halt_max_steps` segments over a split leaves behind."""

    halt_max_steps: int
    preds_at: dict[int, np.ndarray]  # segment count -> predictions [N, seq_len]
    halt_steps: np.ndarray  # [N] first segment where the Q-head says halt (halt_max_steps if never)
    halt_preds: np.ndarray  # [N, seq_len] predictions at that segment
    final_q_halt: np.ndarray  # [N] q_halt logit after the last segment (nan without a Q-head)

    @property
    def final_preds(self) -> np.ndarray:
        return self.preds_at[self.halt_max_steps]


def run_segments(
    head: Any,
    data: SplitData,
    batch_size: int,
    halt_max_steps: int,
    keep: list[int],
    device: Any,
    progress: bool = False,
) -> SegmentRun:
    """Every batch through `halt_max_steps` segments (`loop.run_batches`), keeping the predictions after the
    `keep` segment counts that are <= halt_max_steps, and always after halt_max_steps (HRM's own figure)."""
    n, dtype = len(data), data.inputs.dtype
    keep = sorted({int(k) for k in keep if 1 <= int(k) <= halt_max_steps} | {halt_max_steps})
    preds_at = {k: np.zeros_like(data.inputs) for k in keep}
    halt_steps = np.full(n, halt_max_steps, dtype=np.int64)
    halt_preds = np.zeros_like(data.inputs)
    final_q_halt = np.full(n, np.nan)  # a model without a Q-head (fixed segments) never halts early
    # HRM's test batches: examples in order, the last chunk padded (blank id, ignored labels).
    starts = range(0, n, batch_size)
    batches = (data.dataset.rows(s, min(s + batch_size, n), pad_to=batch_size) for s in starts)
    runs: Any = zip(starts, run_batches(head, batches, halt_max_steps, device), strict=True)
    if progress:
        from tqdm import tqdm

        runs = tqdm(runs, total=len(starts), desc=f"evaluate {data.name}", unit="batch", leave=False)
    head.eval()
    for start, (_, segments) in runs:
        stop = min(start + batch_size, n)
        real, rows = stop - start, slice(start, stop)
        decided = np.zeros(real, dtype=bool)
        for step, (_, outputs) in enumerate(segments, start=1):
            preds = outputs["preds"][:real].cpu().numpy().astype(dtype)
            if step in preds_at:
                preds_at[step][rows] = preds
            halting = ~decided & (q_says_halt(head, outputs, real) | (step == halt_max_steps))
            halt_steps[rows][halting] = step
            halt_preds[rows][halting] = preds[halting]
            decided |= halting
        if "q_halt_logits" in outputs:
            final_q_halt[rows] = outputs["q_halt_logits"][:real].float().cpu().numpy()
    return SegmentRun(halt_max_steps, preds_at, halt_steps, halt_preds, final_q_halt)


def q_says_halt(head: Any, outputs: dict[str, Any], real: int) -> np.ndarray:
    """Rows whose Q-head says halt, by the model's own training rule (HRM: q_halt > q_continue; TRM with
    no_ACT_continue: q_halt > 0; HRM's where the model states none); all False without a Q-head."""
    if "q_halt_logits" not in outputs:
        return np.zeros(real, dtype=bool)
    q_halt, q_continue = outputs["q_halt_logits"], outputs["q_continue_logits"]
    rule = getattr(getattr(head, "model", None), "q_says_halt", None)
    says = rule(q_halt, q_continue) if rule is not None else q_halt > q_continue
    return says[:real].cpu().numpy()


@dataclass
class SplitResult:
    """Metrics of one split plus what the plots and the report draw from."""

    metrics: dict[str, Any]
    final: M.ExampleScores
    optimum: np.ndarray | None
    vehicles: list[str]  # the per-vehicle metric keys (none for a single identifier)
    run: SegmentRun


def metric_key(name: str, identifier: int) -> str:
    """A vehicle name as a metric key: letters, digits, _ and - only (DVC splits keys on dots), never a
    split-level key; '<blank>' becomes 'blank'."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or f"id{identifier}"
    return f"id_{key}" if key in RESERVED_KEYS else key


def evaluate_split(
    data: SplitData, run: SegmentRun, names: list[str], task: M.RouteTask | None
) -> SplitResult:
    """Every number of one split: overall, per vehicle, per segment count, Q-halting, and the reference rows."""
    optimum = M.optimal_costs(data.inputs, data.identifiers, task) if task is not None else None

    def score(preds: np.ndarray) -> M.ExampleScores:
        ignore = data.metadata.ignore_label_id
        return M.score_predictions(data.inputs, preds, data.labels, data.identifiers, ignore, task, optimum)

    def rates(scores: M.ExampleScores) -> dict[str, Any]:
        return {k: v for k, v in M.aggregate(scores).items() if k != "count"}

    final = score(run.final_preds)
    # The final predictions with the Q-head's verdict (nan without a Q-head) and halting: the model's rows.
    q_halt_right = np.where(np.isfinite(run.final_q_halt), (run.final_q_halt >= 0) == final.exact, np.nan)
    acted = replace(final, q_halt_right=q_halt_right, halt_steps=run.halt_steps)

    result = M.aggregate(acted)
    vehicles: list[str] = []
    present = [int(i) for i in np.unique(data.identifiers)]
    if 1 < len(present) <= M.MAX_BREAKDOWN_NAMES:  # one identifier (Maze) would repeat the overall row
        for ident in present:
            vehicles.append(metric_key(names[ident], ident))
            result[vehicles[-1]] = M.aggregate(acted, data.identifiers == ident)
    result["segments"] = {
        str(k): rates(final if k == run.halt_max_steps else score(preds)) for k, preds in run.preds_at.items()
    }
    result["q_halt"] = {**rates(score(run.halt_preds)), M.STEPS: float(run.halt_steps.mean())}
    result["copy_input"] = rates(score(data.inputs))
    if task is not None:
        # The labels scored as predictions: 1.0 unless the data's own routes are broken or not optimal.
        oracle = rates(score(data.labels))
        result["labels"] = {k: oracle[k] for k in (M.ROUTE_VALID, M.ROUTE_OPTIMAL)}
        # How much search the split needs, and the model's figures on each part.
        monotone_preds, monotone_cost = M.monotone_baseline(data.inputs, data.identifiers, task)
        detour = M.needs_detour(optimum, monotone_cost)
        result["detour"] = M.aggregate(acted, detour)
        result["monotone"] = M.aggregate(acted, np.isfinite(optimum) & ~detour)
        result["monotone_path"] = rates(score(monotone_preds))
        if BLIND_VEHICLE in names:
            blind = M.vehicle_blind_baseline(data.inputs, task, names.index(BLIND_VEHICLE))
            result["vehicle_blind"] = rates(score(blind))
    return SplitResult(result, final, optimum, vehicles, run)


def load_head(arch: dict[str, Any], metadata: Any, checkpoint: Path, batch_size: int, device: Any) -> Any:
    """build_model(arch, metadata) with the checkpoint's weights (HRM's key layout, e.g. an official one)."""
    import torch

    from hrm.models import build_model, load_official_checkpoint

    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: checkpoint not found (run the train stage first?)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file, not a bug here
        raise UserError(f"{checkpoint}: not a weights-only torch checkpoint ({err})") from err
    head = build_model(arch, metadata, batch_size=batch_size, device=device)
    try:
        load_official_checkpoint(head, state)  # strips torch.compile's prefix; UserError on any mismatch
    except UserError as err:
        raise UserError(f"{checkpoint}: {err}") from err
    return head


# ---- the stage ----

# What write_reports puts in paths.eval_reports: a folder holding anything else is not replaced.
EVAL_OUTPUTS = ("metrics.json", HEADLINE_FILE, "plots", "figures", "index.html")


def run_evaluation(params: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """The evaluate stage: every split through the checkpoint, then metrics, plots, figures and the report."""
    from hrm.config import section
    from hrm.runtime import resolve_device, set_cpu_threads

    paths, arch, settings = section(params, "paths"), section(params, "arch"), section(params, "evaluate")
    # the reports are built beside paths.eval_reports and swapped in: its parent must take files, checked now
    check_writable(
        Path(paths["eval_reports"]).parent, f"params.yaml: paths.eval_reports {paths['eval_reports']}"
    )
    check_replaceable(paths["eval_reports"], EVAL_OUTPUTS)  # refused now, not after evaluating
    # types and ranges: schemas/params.schema.json, applied by hrm.config.load_params
    batch_size = int(settings["batch_size"])
    data_root = Path(paths["hrm"])
    splits = {
        "train": load_split(data_root, "train", limit=int(settings["train_examples"])),
        "test": load_split(data_root, "test"),
    }
    metadata = splits["train"].metadata
    for key in ("seq_len", "vocab_size", "num_puzzle_identifiers"):
        theirs, ours = getattr(splits["test"].metadata, key), getattr(metadata, key)
        if theirs != ours:
            raise UserError(
                f"{data_root / 'test' / 'dataset.json'}: field '{key}' is {theirs}, train has {ours}; "
                "one model cannot read both"
            )
    names = load_identifier_names(data_root, metadata.num_puzzle_identifiers)
    task = load_route_task(data_root, metadata)
    device = resolve_device(str(params.get("train", {}).get("device", "auto")))
    set_cpu_threads(int(params.get("train", {}).get("threads", 0)))
    head = load_head(arch, metadata, Path(paths["model"]), batch_size, device)
    halt_max_steps = int(head.model.eval_segments)  # the transformer baseline predicts in one segment
    segments = list(settings["segments"])
    results = {}
    for name, data in splits.items():
        run = run_segments(head, data, batch_size, halt_max_steps, segments, device, progress=progress)
        results[name] = evaluate_split(data, run, names, task)
    context = {
        "checkpoint": str(paths["model"]),
        "data": str(data_root),
        "model": f"{arch.get('name')} hidden {arch.get('hidden_size')}, H/L layers {arch.get('H_layers')}/"
        f"{arch.get('L_layers')}, H/L cycles {arch.get('H_cycles')}/{arch.get('L_cycles')}",
        "halt_max_steps": str(halt_max_steps),
        "examples": ", ".join(f"{n} {len(d)}" for n, d in splits.items()),
        "device": str(device),
    }
    write_reports(paths, splits, results, names, task, int(settings["route_map_examples"]), context)
    return {name: result.metrics for name, result in results.items()}


def headline(test: dict[str, Any]) -> dict[str, float]:
    """The answer in a few numbers: the test split's route metrics beside the no-model baselines. A DVC metric of
    its own, declared first in dvc.yaml, so `dvc exp show` and `dvc metrics diff` lead with it."""
    return {
        f"test_{M.ROUTE_OPTIMAL}": test.get(M.ROUTE_OPTIMAL),  # None without a cost model
        f"test_{M.ROUTE_VALID}": test.get(M.ROUTE_VALID),
        f"test_{M.TOKEN}": test[M.TOKEN],
        f"test_{M.EXACT}": test[M.EXACT],
        f"baseline_monotone_{M.ROUTE_OPTIMAL}": test.get("monotone_path", {}).get(M.ROUTE_OPTIMAL),
        f"baseline_vehicle_blind_{M.ROUTE_OPTIMAL}": test.get("vehicle_blind", {}).get(M.ROUTE_OPTIMAL),
        f"baseline_copy_input_{M.TOKEN}": test.get("copy_input", {}).get(M.TOKEN),
    }


def write_reports(
    paths: dict[str, Any],
    splits: dict[str, SplitData],
    results: dict[str, SplitResult],
    names: list[str],
    task: M.RouteTask | None,
    n_maps: int,
    context: dict[str, str],
) -> None:
    """Everything under paths.eval_reports, built in a staging folder and swapped in whole (never half-written)."""
    metrics = {name: result.metrics for name, result in results.items()}
    vehicles = {name: result.vehicles for name, result in results.items()}
    halt_max_steps = results["test"].run.halt_max_steps
    with staged_directory(Path(paths["eval_reports"]), manifest=True) as staging:
        atomic_write_json(staging / "metrics.json", metrics, indent=2)
        atomic_write_json(staging / HEADLINE_FILE, headline(metrics["test"]), indent=2)
        plot_dir, figure_dir = staging / "plots", staging / "figures"
        plot_dir.mkdir()
        figure_dir.mkdir()
        segment_rows = plots.segment_rows(metrics)
        step_rows = plots.act_step_rows({n: r.run.halt_steps for n, r in results.items()}, halt_max_steps)
        vehicle_rows = {n: plots.vehicle_rows(metrics[n], vehicles[n]) for n in splits}
        atomic_write_json(plot_dir / "segments.json", segment_rows, indent=1)
        atomic_write_json(plot_dir / "vehicles.json", vehicle_rows["test"], indent=1)
        atomic_write_json(plot_dir / "act_steps.json", step_rows, indent=1)

        q_halt = {n: {**m["q_halt"], M.STEPS: m[M.STEPS]} for n, m in metrics.items()}
        plots.plot_segments(segment_rows, q_halt, figure_dir / "segments.png")
        plots.plot_act_steps(step_rows, figure_dir / "act_steps.png")
        for name in [n for n in splits if vehicles[n]]:
            plots.plot_vehicles(vehicle_rows[name], name, figure_dir / f"vehicles_{name}.png")
        training = plots.plot_training_curves(Path(paths["train_log"]), figure_dir / "training_curves.png")
        route_maps = []
        if task is not None and n_maps > 0 and len(splits["test"]):
            route_maps = _route_maps(splits["test"], results["test"], names, task, n_maps, figure_dir)
        page = report.render_report(
            results=metrics,
            vehicles=vehicles,
            figure_dir=figure_dir,
            training=training,
            route_maps=route_maps,
            context=context,
            halt_max_steps=halt_max_steps,
            has_routes=task is not None,
        )
        atomic_write_text(staging / "index.html", page)


def _route_maps(
    data: SplitData, result: SplitResult, names: list[str], task: M.RouteTask, count: int, folder: Path
) -> list[tuple[Path, str]]:
    """`count` examples (half of them, rounded up, not optimal) drawn as route maps: (PNG, caption)."""
    final, maps = result.final, []
    for rank, index in enumerate(plots.choose_route_examples(final.route_optimal, count)):
        cost, optimum = final.route_cost[index], result.optimum[index]
        if not final.route_valid[index]:
            verdict = f"invalid: {final.route_reason[index]}"
        elif final.route_optimal[index]:
            verdict = f"optimal, cost {cost:.0f}"
        else:
            verdict = f"valid, {cost / optimum - 1:+.1%} over the optimum, cost {cost:.0f}"
        base = f", base {int(data.base_ids[index])}" if data.base_ids is not None else ""
        where = f"test example {index}{base}, {names[int(data.identifiers[index])]}"
        path = folder / f"route_map_{rank:02d}.png"
        grids = (data.inputs[index], data.labels[index], result.run.final_preds[index])
        captions = (f"cost {optimum:.0f}" if np.isfinite(optimum) else "no route", textwrap.fill(verdict, 55))
        plots.plot_route_map(path, where, grids, captions, task.rows, task.cols)
        maps.append((path, f"{where}: {verdict}"))
    return maps


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """A few lines for the terminal; the full picture is in metrics.json and index.html."""
    lines = []
    for split, values in metrics.items():
        optimal = M.ROUTE_OPTIMAL
        parts = [f"exact {values[M.EXACT]:.3f}", f"token {values[M.TOKEN]:.3f}"]
        if optimal in values:  # route metrics come with the copy-input and monotone rows
            parts += [
                f"route valid {values[M.ROUTE_VALID]:.3f}",
                f"route optimal {values[optimal]:.3f}",
                f"(copy-input baseline: route optimal {values['copy_input'][optimal]:.3f})",
                f"needs a detour {values['detour']['count']}/{values['count']}: route optimal "
                f"{_rate(values['detour'][optimal])} there, "
                f"{_rate(values['monotone'][optimal])} on monotone ones "
                f"(best-monotone-path baseline {values['monotone_path'][optimal]:.3f})",
            ]
        parts.append(f"Q-halt steps {values[M.STEPS]:.2f}")
        lines.append(f"{split}: " + ", ".join(parts))
    return lines
