"""Per-example route facts and difficulty figures, below everything that checks or transforms routes.

`example_facts`: each label's route (valid for its vehicle, cost, the independent Dijkstra optimum, unique,
detour, turns), once per split, for validate's checks (`compliance`) and augment. `detour_figures`: the one
computation of difficulty figures, for generate's summary and validate's report.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from hrm.data import routing, spec
from hrm.data.conversion.raw import RawSplit


@dataclass
class ExampleFacts:
    """Facts about every example of one split, in example order (arrays of length N)."""

    n_start_input: np.ndarray
    n_goal_input: np.ndarray
    n_start_label: np.ndarray
    n_goal_label: np.ndarray
    unexpected_input: np.ndarray  # cells holding a token an input may not hold
    unexpected_label: np.ndarray
    bad_label_changes: np.ndarray  # cells where label != input other than a ROUTE mark on a non-endpoint
    route_length: np.ndarray  # ROUTE cells + start + goal
    route_cost: np.ndarray  # float, NaN where the route is invalid
    optimal_cost: np.ndarray  # float, NaN where no route exists (scipy Dijkstra)
    route_valid: np.ndarray  # bool (routing.check_route)
    route_unique: np.ndarray  # bool: the optimum is unique and is the labelled route
    route_reason: list[str]
    paths: list[tuple[int, ...]]  # ordered route cells when valid

    def detours(self, cols: int) -> np.ndarray:
        """[N] detour cells of each route (`routing.detour_cells`); an invalid route counts as none."""
        return np.array([routing.detour_cells(p, cols) if p else 0 for p in self.paths], dtype=np.int64)

    def turns(self) -> np.ndarray:
        """[N] turns of each route; 0 for an invalid one."""
        return np.array([routing.turns(p) if p else 0 for p in self.paths], dtype=np.int64)


def _token_counts(grids: np.ndarray) -> np.ndarray:
    """[N, 256] count of each token id per grid."""
    n = grids.shape[0]  # tokens outside 0..255 (only in broken files the audit reads) count as 0 or 255
    offsets = np.clip(grids, 0, 255).astype(np.int64) + 256 * np.arange(n)[:, None]
    return np.bincount(offsets.reshape(-1), minlength=256 * n).reshape(n, 256)


def example_facts(split: RawSplit, cost_table: np.ndarray, rows: int, cols: int) -> ExampleFacts:
    inputs, labels = split.inputs, split.labels
    count_in, count_label = _token_counts(inputs), _token_counts(labels)
    allowed_in, allowed_label = (
        np.isin(np.arange(256), tokens) for tokens in (spec.INPUT_TOKENS, spec.LABEL_TOKENS)
    )
    endpoint = (inputs == spec.START) | (inputs == spec.GOAL)
    route_mark = (labels == spec.ROUTE) & ~endpoint
    n = split.num_examples
    facts = ExampleFacts(
        n_start_input=count_in[:, spec.START],
        n_goal_input=count_in[:, spec.GOAL],
        n_start_label=count_label[:, spec.START],
        n_goal_label=count_label[:, spec.GOAL],
        unexpected_input=count_in[:, ~allowed_in].sum(axis=1),
        unexpected_label=count_label[:, ~allowed_label].sum(axis=1),
        bad_label_changes=((labels != inputs) & ~route_mark).sum(axis=1),
        route_length=count_label[:, spec.ROUTE] + 2,
        route_cost=np.full(n, np.nan),
        optimal_cost=np.full(n, np.nan),
        route_valid=np.zeros(n, dtype=bool),
        route_unique=np.zeros(n, dtype=bool),
        route_reason=[""] * n,
        paths=[()] * n,
    )
    for i in range(n):
        identifier = int(split.example_identifier[i])
        if not 0 < identifier < cost_table.shape[0]:
            facts.route_reason[i] = (
                f"puzzle identifier {identifier} has no vehicle in the summary's cost table"
            )
            continue
        cost_row = cost_table[identifier]
        check = routing.check_route(inputs[i], labels[i], cost_row, rows, cols)
        facts.route_reason[i] = check.reason
        starts, goals = np.flatnonzero(inputs[i] == spec.START), np.flatnonzero(inputs[i] == spec.GOAL)
        if starts.size != 1 or goals.size != 1 or not 0 <= inputs[i].min() <= inputs[i].max() < cost_row.size:
            continue  # no optimum to compare with (broken files: a token the cost table lacks)
        cell_cost = cost_row[inputs[i]]
        optimum, on_optimal = routing.dijkstra_optimum(cell_cost, int(starts[0]), int(goals[0]), rows, cols)
        if optimum is not None:
            facts.optimal_cost[i] = optimum
        if not check.valid:
            continue
        facts.route_valid[i] = True
        facts.paths[i] = check.path
        route_cells = np.zeros(rows * cols, dtype=bool)
        route_cells[list(check.path)] = True
        facts.route_cost[i] = int(cell_cost[route_mark[i]].sum())  # own sum, not routing.route_cost
        facts.route_unique[i] = bool(np.array_equal(on_optimal, route_cells))
    return facts


def detour_figures(detours: list[int], turn_counts: list[int], min_detour: int) -> dict[str, Any]:
    """Detour histogram (cells -> examples), monotone share, share with a detour >= min_detour, turns.
    math.fsum is exactly rounded: the same figure on every CPU."""
    n = len(detours)
    histogram = Counter(detours)
    return {
        "examples": n,
        "monotone_share": round(histogram.get(0, 0) / n, 6) if n else 0.0,
        "detour_share": round(sum(d >= min_detour for d in detours) / n, 6) if n else 0.0,
        "mean_detour": round(math.fsum(detours) / n, 4) if n else 0.0,
        "max_detour": max(detours, default=0),
        "detour_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "mean_turns": round(math.fsum(turn_counts) / n, 4) if n else 0.0,
        "max_turns": max(turn_counts, default=0),
    }
