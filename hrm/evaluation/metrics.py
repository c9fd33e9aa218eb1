"""Per-example scores and their aggregates: HRM's grid metrics plus route metrics.

Exact match under-counts routing skill whenever a scenario has several optimal routes, so route metrics judge
the predicted route itself: it must be one connected path from start to goal over cells the vehicle may enter
(`hrm.data.routing.check_route`, the same rule the data was generated with), and it is optimal when its cost
equals the shortest-path cost, computed independently of the label by `routing.dijkstra_optimum` (scipy's Dijkstra).
Everything here is numpy (scipy only inside the optimum), so it is cheap to import and to test.
"""

from __future__ import annotations

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
    route_reason: list[str] = field(default_factory=list)  # why a route is invalid ("" when valid)


def grid_scores(preds: np.ndarray, labels: np.ndarray, ignore_label_id: int | None) -> ExampleScores:
    """HRM's token and exact accuracy per example; cells whose label is `ignore_label_id` do not count."""
    preds = np.asarray(preds)
    labels = np.asarray(labels)
    counted = np.ones(labels.shape, dtype=bool) if ignore_label_id is None else labels != ignore_label_id
    correct = (preds == labels) & counted
    n_counted = counted.sum(axis=1)
    token_accuracy = correct.sum(axis=1) / np.maximum(n_counted, 1)
    exact = correct.sum(axis=1) == n_counted
    return ExampleScores(token_accuracy=token_accuracy.astype(np.float64), exact=exact)


def optimal_route_cost(input_grid: np.ndarray, cost_row: np.ndarray, rows: int, cols: int) -> int | None:
    """Cheapest start-to-goal cost over enterable cells (4-neighbour moves), or None if the goal is unreachable.

    Independent of the label and of the generator's A*: a second opinion on what "optimal" means.
    """
    grid = np.asarray(input_grid[: rows * cols], dtype=np.int64)
    starts = np.flatnonzero(grid == spec.START)
    goals = np.flatnonzero(grid == spec.GOAL)
    if len(starts) != 1 or len(goals) != 1:
        return None
    cost, _ = routing.dijkstra_optimum(
        routing.cell_costs(grid, cost_row), int(starts[0]), int(goals[0]), rows, cols
    )
    return cost


def optimal_costs(inputs: np.ndarray, identifiers: np.ndarray, task: RouteTask) -> np.ndarray:
    """Optimum per example (nan where no route exists); computed once per split, reused for every prediction."""
    out = np.full(len(inputs), np.nan)
    for i, (grid, ident) in enumerate(zip(inputs, identifiers, strict=True)):
        cost = optimal_route_cost(grid, task.cost_table[int(ident)], task.rows, task.cols)
        if cost is not None:
            out[i] = cost
    return out


def route_scores(
    inputs: np.ndarray,
    preds: np.ndarray,
    identifiers: np.ndarray,
    optimum: np.ndarray,
    task: RouteTask,
    scores: ExampleScores,
) -> ExampleScores:
    """Add route validity, optimality and cost to `scores` (in place, and returned)."""
    from hrm.data.routing import check_route

    n = len(inputs)
    valid = np.zeros(n, dtype=bool)
    cost = np.full(n, np.nan)
    reasons: list[str] = []
    cells = task.rows * task.cols
    for i in range(n):
        row = task.cost_table[int(identifiers[i])]
        check = check_route(
            np.asarray(inputs[i][:cells]), np.asarray(preds[i][:cells]), row, task.rows, task.cols
        )
        valid[i] = bool(check.valid)
        reasons.append("" if check.valid else str(check.reason))
        if check.valid:
            cost[i] = float(check.cost)
    scores.route_valid = valid
    scores.route_cost = cost
    scores.route_optimal = valid & np.isfinite(optimum) & (cost == optimum)
    scores.route_reason = reasons
    return scores


def score_predictions(
    inputs: np.ndarray,
    preds: np.ndarray,
    labels: np.ndarray,
    identifiers: np.ndarray,
    ignore_label_id: int | None,
    task: RouteTask | None,
    optimum: np.ndarray | None,
) -> ExampleScores:
    """Grid scores always; route scores when the data carries a cost model (`task` and `optimum` given)."""
    scores = grid_scores(preds, labels, ignore_label_id)
    if task is not None and optimum is not None:
        route_scores(inputs, preds, identifiers, optimum, task, scores)
    return scores


def _mean(values: np.ndarray) -> float | None:
    """Mean as a plain float, None for an empty set (JSON has no NaN; DVC shows None as missing)."""
    return None if len(values) == 0 else float(np.mean(values))


def aggregate(
    scores: ExampleScores, optimum: np.ndarray | None, mask: np.ndarray | None = None
) -> dict[str, Any]:
    """Rates over the examples in `mask`: exact_accuracy, accuracy (token), and route rates when scored.

    route_cost_gap is the mean relative excess cost (cost / optimum - 1) over valid routes only, so it reads
    "how much worse are the routes that do reach the goal"; it is None when no route is valid.
    """
    if mask is None:
        mask = np.ones(len(scores.exact), dtype=bool)
    out: dict[str, Any] = {
        "count": int(mask.sum()),
        "exact_accuracy": _mean(scores.exact[mask]),
        "accuracy": _mean(scores.token_accuracy[mask]),
    }
    if scores.route_valid is not None and optimum is not None:
        valid = scores.route_valid & mask
        out["route_valid_rate"] = _mean(scores.route_valid[mask])
        out["route_optimal_rate"] = _mean(scores.route_optimal[mask])
        with np.errstate(divide="ignore", invalid="ignore"):
            gaps = scores.route_cost[valid] / optimum[valid] - 1.0
        gaps = gaps[np.isfinite(gaps)]
        out["route_cost_gap"] = _mean(gaps)
    return out


# ---- baselines that show how much search the data needs ---------------------------------------------------


def _endpoints(grid: np.ndarray) -> tuple[int, int] | None:
    starts, goals = np.flatnonzero(grid == spec.START), np.flatnonzero(grid == spec.GOAL)
    return (int(starts[0]), int(goals[0])) if len(starts) == 1 and len(goals) == 1 else None


def monotone_baseline(
    inputs: np.ndarray, identifiers: np.ndarray, task: RouteTask
) -> tuple[np.ndarray, np.ndarray]:
    """The best monotone path per example (`routing.best_monotone`, the vehicle's own costs) as predictions,
    and its cost (nan where every monotone route is blocked; the prediction is then the input unchanged).

    Its route-optimal rate is the share of examples that need no search: walking towards the goal over
    the cheapest cells already finds an optimum."""
    from hrm.data import routing

    cells = task.rows * task.cols
    preds = np.array(inputs, copy=True)
    cost = np.full(len(inputs), np.nan)
    for i, (grid, ident) in enumerate(zip(inputs, identifiers, strict=True)):
        grid = np.asarray(grid[:cells], dtype=np.int64)
        ends = _endpoints(grid)
        if ends is None:
            continue
        costs = routing.cell_costs(grid, task.cost_table[int(ident)])
        route = routing.best_monotone(costs, ends[0], ends[1], task.rows, task.cols)
        if route.cost is not None:
            cost[i] = route.cost
            preds[i, :cells] = routing.mark_route(grid, route.path)
    return preds, cost


def vehicle_blind_baseline(inputs: np.ndarray, task: RouteTask, identifier: int) -> np.ndarray:
    """Every example predicted with the optimal route of one vehicle (`identifier`, the car) whatever its own
    vehicle: what a model that ignores the vehicle identifier could at best do. The input unchanged where
    that vehicle has no route."""
    from hrm.data import routing

    cells = task.rows * task.cols
    preds = np.array(inputs, copy=True)
    for i, grid in enumerate(inputs):
        grid = np.asarray(grid[:cells], dtype=np.int64)
        ends = _endpoints(grid)
        if ends is None:
            continue
        costs = routing.cell_costs(grid, task.cost_table[identifier])
        solution = routing.solve(costs, ends[0], ends[1], task.rows, task.cols)
        if solution.cost is not None:
            preds[i, :cells] = routing.mark_route(grid, solution.path)
    return preds


def needs_detour(optimum: np.ndarray, monotone_cost: np.ndarray) -> np.ndarray:
    """bool [N]: a route exists and no optimal route is monotone (the best monotone path costs more, or is
    blocked). Its complement among routable examples is "monotone"."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(optimum) & ~(monotone_cost == optimum)
