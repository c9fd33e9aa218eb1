"""Per-example scores and their aggregates: HRM's grid metrics plus route metrics (numpy only, cheap to test).

Exact match under-counts routing skill where a scenario has several optimal routes, so a predicted route is
judged itself: one connected path from start to goal over cells the vehicle may enter (`routing.check_route`,
the generator's rule), optimal when it costs what `routing.dijkstra_optimum` finds, independently of the label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hrm.data import routing, spec

# Vehicle (puzzle identifier) breakdowns stop being readable beyond this many names (ARC has thousands).
MAX_BREAKDOWN_NAMES = 32


@dataclass(frozen=True)
class RouteTask:
    """What route metrics need: the grid size and the cost of entering each token, per puzzle identifier."""

    rows: int
    cols: int
    cost_table: np.ndarray  # [num_identifiers, vocab] int64, -1 = barred


@dataclass
class ExampleScores:
    """One value per example, so any subset (a vehicle, a split) aggregates the same way."""

    token_accuracy: np.ndarray  # float64 [N], fraction of counted cells right
    exact: np.ndarray  # bool [N], every counted cell right
    route_valid: np.ndarray | None = None  # bool [N]
    route_optimal: np.ndarray | None = None  # bool [N]
    route_cost: np.ndarray | None = None  # float64 [N], nan where invalid
    route_gap: np.ndarray | None = None  # float64 [N], cost / optimum - 1, nan where invalid
    route_reason: list[str] = field(default_factory=list)  # why a route is invalid ("" when valid)
    q_halt_right: np.ndarray | None = None  # float64 [N], q_halt >= 0 agrees with exact; nan: no Q-head
    halt_steps: np.ndarray | None = None  # int [N], the segment where the Q-head halts


# ---- the metric registry: every metric's name (its key in metrics.json, dvclive, hrm compare), label and rule --

EXACT = "exact_accuracy"
TOKEN = "accuracy"
ROUTE_VALID = "route_valid_rate"
ROUTE_OPTIMAL = "route_optimal_rate"
ROUTE_COST_GAP = "route_cost_gap"
Q_HALT = "q_halt_accuracy"
STEPS = "steps"
# The loss head's sums (ACTLossHead, HRM's names), in the order the trainer reduces and logs them
LOSS_KEYS = ("lm_loss", "q_halt_loss", "q_continue_loss")  # q_continue_loss: training only (target-Q)
HEAD_METRICS = ("count", TOKEN, EXACT, Q_HALT, STEPS, *LOSS_KEYS)


@dataclass(frozen=True)
class Metric:
    """Per-example values (None where not scored: no cost model, no run) and their reduction over a set of
    examples: the mean over all of them (a sum / count, which the trainer all-reduces), or over those with a
    finite value only."""

    label: str  # column label in the report, hrm compare and the budget curves
    values: Callable[[ExampleScores], np.ndarray | None]
    over_finite: bool = False

    def reduce(self, values: np.ndarray) -> float | None:
        return mean_or_none(values[np.isfinite(values)] if self.over_finite else values)


# In metrics.json's order. route_cost_gap: "how much worse are the routes that arrive" (valid ones only).
METRICS = {
    EXACT: Metric("exact", lambda s: s.exact),
    TOKEN: Metric("token acc.", lambda s: s.token_accuracy),
    ROUTE_VALID: Metric("route valid", lambda s: s.route_valid),
    ROUTE_OPTIMAL: Metric("route optimal", lambda s: s.route_optimal),
    ROUTE_COST_GAP: Metric("cost gap (valid)", lambda s: s.route_gap, over_finite=True),
    Q_HALT: Metric("q_halt acc.", lambda s: s.q_halt_right, over_finite=True),  # None without a Q-head
    STEPS: Metric("ACT steps", lambda s: s.halt_steps),
}
ROUTE_METRICS = (ROUTE_VALID, ROUTE_OPTIMAL, ROUTE_COST_GAP)
# The route metrics that are means over every example: the trainer's evals sum them per batch (dvclive).
SUMMED_ROUTE_METRICS = tuple(n for n in ROUTE_METRICS if not METRICS[n].over_finite)


def grid_scores(preds: np.ndarray, labels: np.ndarray, ignore_label_id: int | None) -> ExampleScores:
    """HRM's token and exact accuracy per example; cells whose label is `ignore_label_id` do not count."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    counted = np.ones(labels.shape, dtype=bool) if ignore_label_id is None else labels != ignore_label_id
    n_right, n_counted = ((preds == labels) & counted).sum(axis=1), counted.sum(axis=1)
    token_accuracy = (n_right / np.maximum(n_counted, 1)).astype(np.float64)
    return ExampleScores(token_accuracy=token_accuracy, exact=n_right == n_counted)


def _route_on(input_grid: np.ndarray, cost_row: np.ndarray, rows: int, cols: int, find: Any) -> Any:
    """`find(costs, start, goal, rows, cols)` on the map's cells; None unless there is one start and one goal."""
    grid = np.asarray(input_grid[: rows * cols], dtype=np.int64)
    starts, goals = np.flatnonzero(grid == spec.START), np.flatnonzero(grid == spec.GOAL)
    if len(starts) != 1 or len(goals) != 1:
        return None
    return find(routing.cell_costs(grid, cost_row), int(starts[0]), int(goals[0]), rows, cols)


def optimal_route_cost(input_grid: np.ndarray, cost_row: np.ndarray, rows: int, cols: int) -> int | None:
    """Cheapest start-to-goal cost over enterable cells (4-neighbour moves), None if the goal is unreachable."""
    found = _route_on(input_grid, cost_row, rows, cols, routing.dijkstra_optimum)
    return None if found is None else found[0]


def optimal_costs(inputs: np.ndarray, identifiers: np.ndarray, task: RouteTask) -> np.ndarray:
    """Optimum per example (nan where no route exists); computed once per split, reused for every prediction."""
    costs = [
        optimal_route_cost(grid, task.cost_table[int(ident)], task.rows, task.cols)
        for grid, ident in zip(inputs, identifiers, strict=True)
    ]
    return np.array([np.nan if cost is None else cost for cost in costs], dtype=np.float64)


def score_predictions(
    inputs: np.ndarray,
    preds: np.ndarray,
    labels: np.ndarray,
    identifiers: np.ndarray,
    ignore_label_id: int | None,
    task: RouteTask | None,
    optimum: np.ndarray | None,
) -> ExampleScores:
    """Grid scores always; route validity, cost and optimality when the data carries a cost model."""
    scores = grid_scores(preds, labels, ignore_label_id)
    if task is None or optimum is None:
        return scores
    cells = task.rows * task.cols
    checks = [
        routing.check_route(grid[:cells], pred[:cells], task.cost_table[int(ident)], task.rows, task.cols)
        for grid, pred, ident in zip(inputs, preds, identifiers, strict=True)
    ]
    scores.route_valid = np.array([bool(c.valid) for c in checks], dtype=bool)
    scores.route_cost = np.array([float(c.cost) if c.valid else np.nan for c in checks], dtype=np.float64)
    scores.route_optimal = scores.route_valid & np.isfinite(optimum) & (scores.route_cost == optimum)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores.route_gap = scores.route_cost / optimum - 1.0
    scores.route_reason = ["" if c.valid else str(c.reason) for c in checks]
    return scores


def mean_or_none(values: np.ndarray) -> float | None:
    """Mean as a plain float, None for an empty set (JSON has no NaN; DVC shows None as missing)."""
    return None if len(values) == 0 else float(np.mean(values))


def aggregate(scores: ExampleScores, mask: np.ndarray | None = None) -> dict[str, Any]:
    """`count` and every scored metric of the registry over the examples in `mask` (all by default)."""
    if mask is None:
        mask = np.ones(len(scores.exact), dtype=bool)
    out: dict[str, Any] = {"count": int(mask.sum())}
    for name, metric in METRICS.items():
        values = metric.values(scores)
        if values is not None:
            out[name] = metric.reduce(values[mask])
    return out


def route_sums(batch: dict[str, Any], preds: Any, task: RouteTask) -> dict[str, float]:
    """SUMMED_ROUTE_METRICS' sums over the batch's labelled rows (torch tensors; padding rows have no labels):
    the trainer's evals add them up and divide by the count."""
    from hrm.training.data import IGNORE_LABEL

    labels = batch["labels"].cpu().numpy()
    labelled = (labels != IGNORE_LABEL).any(-1)
    inputs = batch["inputs"].cpu().numpy()[labelled]
    identifiers = batch["puzzle_identifiers"].cpu().numpy()[labelled]
    optimum = optimal_costs(inputs, identifiers, task)
    scores = score_predictions(
        inputs, preds.cpu().numpy()[labelled], labels[labelled], identifiers, IGNORE_LABEL, task, optimum
    )
    return {name: float(np.sum(METRICS[name].values(scores))) for name in SUMMED_ROUTE_METRICS}


# ---- baselines that show how much search the data needs ---------------------------------------------------


def _routes_as_preds(inputs: np.ndarray, cost_rows: Any, task: RouteTask, find: Any) -> tuple[Any, Any]:
    """Each example's route by `find(costs, start, goal, rows, cols)` (.cost, .path) marked on its input, and
    its cost; the input unchanged (cost nan) where `find` has none."""
    cells = task.rows * task.cols
    preds = np.array(inputs, copy=True)
    cost = np.full(len(inputs), np.nan)
    for i, (grid, cost_row) in enumerate(zip(inputs, cost_rows, strict=True)):
        route = _route_on(grid, cost_row, task.rows, task.cols, find)
        if route is not None and route.cost is not None:
            cost[i] = route.cost
            preds[i, :cells] = routing.mark_route(grid[:cells], route.path)
    return preds, cost


def monotone_baseline(
    inputs: np.ndarray, identifiers: np.ndarray, task: RouteTask
) -> tuple[np.ndarray, np.ndarray]:
    """The best monotone path per example (`routing.best_monotone`, the vehicle's costs) as predictions, and its
    cost (nan where every monotone route is blocked): its route-optimal rate is the share needing no search."""
    rows = [task.cost_table[int(ident)] for ident in identifiers]
    return _routes_as_preds(inputs, rows, task, routing.best_monotone)


def vehicle_blind_baseline(inputs: np.ndarray, task: RouteTask, identifier: int) -> np.ndarray:
    """Every example predicted with the optimal route of one vehicle (`identifier`, the car): the best a model
    that ignores the vehicle identifier could do."""
    return _routes_as_preds(inputs, [task.cost_table[identifier]] * len(inputs), task, routing.solve)[0]


def needs_detour(optimum: np.ndarray, monotone_cost: np.ndarray) -> np.ndarray:
    """bool [N]: a route exists and no optimal route is monotone (the best monotone path costs more, or is
    blocked). Its complement among routable examples is "monotone"."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(optimum) & ~(monotone_cost == optimum)
