"""Shortest routes on a token grid: A* with optimal-route counting, route checking, an independent Dijkstra.

Rules (`CostModel.to_dict()["cost_rule"]`): 4-neighbour moves; entering a cell costs its token's cost for the
vehicle (-1 = barred), start and goal cost 0; a route's cost sums every cell after the start. Costs are exact
integers, so ties are counted, not guessed. Grids are flat, row-major (`index = row * cols + col`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import cache, lru_cache

import numpy as np

from hrm.data import spec

UNREACHED = float("inf")


@lru_cache(maxsize=16)
def neighbours(rows: int, cols: int) -> tuple[tuple[int, ...], ...]:
    """4-neighbours of every flat cell index, in a fixed order (up, left, right, down)."""
    result = []
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        steps = ((row > 0, -cols), (col > 0, -1), (col < cols - 1, 1), (row < rows - 1, cols))
        result.append(tuple(index + step for inside, step in steps if inside))
    return tuple(result)


def cell_costs(grid: np.ndarray, cost_row: np.ndarray) -> np.ndarray:
    """Entering cost of every cell of `grid` (flat int64, -1 = barred) for one vehicle's cost-table row."""
    return np.asarray(cost_row, dtype=np.int64)[np.asarray(grid, dtype=np.int64).reshape(-1)]


@dataclass(frozen=True)
class RouteSolution:
    """Result of `solve` and `best_monotone`. `optimal_routes` is capped at `solve`'s `count_cap` (2 is enough
    to see a tie); `best_monotone` does not count them and leaves 0."""

    cost: int | None  # None: the goal cannot be reached
    path: tuple[int, ...]  # flat cell indices, start first, goal last; empty when unreachable
    optimal_routes: int = 0  # number of distinct minimum-cost routes, min(true count, count_cap)


def _heuristic(costs: np.ndarray, start: int, goal: int, rows: int, cols: int) -> list[int]:
    """Admissible, consistent bound to the goal: every step but the last (free) enters a cell costing at least
    `min_step`, so `min_step * max(manhattan - 1, 0)`."""
    inner = costs.copy()
    inner[[start, goal]] = -1
    enterable = inner[inner >= 0]
    min_step = int(enterable.min()) if enterable.size else 0
    flat = np.arange(rows * cols)
    goal_row, goal_col = divmod(goal, cols)
    manhattan = np.abs(flat // cols - goal_row) + np.abs(flat % cols - goal_col)
    return (min_step * np.maximum(manhattan - 1, 0)).tolist()


def solve(
    costs: np.ndarray, start: int, goal: int, rows: int, cols: int, count_cap: int = 2
) -> RouteSolution:
    """Minimum-cost route by A*, plus the number of optimal routes (capped).

    A cell's count sums its tight predecessors' (g[u] + cost[v] == g[v]). Popping by (f, g) with a consistent
    heuristic and positive costs pops every tight predecessor first; the free step into the goal (equal g) is
    handled by sorting the goal last among equal (f, g). So counts are final when popped.
    """
    costs = np.asarray(costs, dtype=np.int64).reshape(-1)
    size = rows * cols
    if costs.size != size:
        raise ValueError(f"costs has {costs.size} cells, expected rows*cols = {size}")
    if not (0 <= start < size and 0 <= goal < size) or start == goal:
        raise ValueError(f"start {start} and goal {goal} must be two different cells of the grid")
    free_cells = set(np.flatnonzero(costs == 0).tolist()) - {start, goal}
    if free_cells:  # zero-cost cycles would make the count of optimal routes infinite
        raise ValueError(
            f"only the start and the goal may cost 0 to enter, not cells {sorted(free_cells)[:5]}"
        )
    cost = costs.tolist()
    cost[start] = cost[goal] = spec.ENDPOINT_COST
    heuristic = _heuristic(costs, start, goal, rows, cols)
    adjacent = neighbours(rows, cols)

    g: list[float] = [UNREACHED] * size
    count = [0] * size
    parent = [-1] * size
    settled = [False] * size
    g[start] = 0
    count[start] = 1
    heap = [(heuristic[start], 0, 0, start)]
    while heap:
        _, g_u, _, u = heapq.heappop(heap)
        if settled[u]:
            continue
        settled[u] = True
        if u == goal:
            break
        count_u = count[u]
        for v in adjacent[u]:
            step = cost[v]
            if step < 0 or settled[v]:
                continue
            g_v = g_u + step
            if g_v < g[v]:
                g[v] = g_v
                count[v] = count_u
                parent[v] = u
                heapq.heappush(heap, (g_v + heuristic[v], g_v, v == goal, v))
            elif g_v == g[v]:
                count[v] = min(count[v] + count_u, count_cap)

    if not settled[goal]:
        return RouteSolution(None, ())
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    path.reverse()
    return RouteSolution(int(g[goal]), tuple(path), count[goal])


def route_cost(costs: np.ndarray, path: tuple[int, ...] | list[int]) -> int:
    """Cost of a route given as flat cells (start first): entering costs of the cells between start and goal."""
    costs = np.asarray(costs, dtype=np.int64).reshape(-1)
    return int(costs[list(path[1:-1])].sum()) if len(path) > 2 else 0


@dataclass(frozen=True)
class RouteCheck:
    """Verdict on one label or predicted grid (`check_route`)."""

    valid: bool  # ROUTE cells + start + goal form one simple path, all enterable, other cells = the input
    reason: str
    cost: int | None
    length: int  # cells marked ROUTE plus start and goal (the route length in cells when valid)
    path: tuple[int, ...] = field(default=())  # the route in order (start ... goal) when valid, else empty


def _walk(
    route_mask: np.ndarray, start: int, goal: int, rows: int, cols: int, length: int
) -> tuple[list[int], str]:
    """The marked cells as one simple path from start to goal, or why they are not one ("" when they are)."""
    on_path = route_mask.copy()
    on_path[[start, goal]] = True
    adjacent = neighbours(rows, cols)
    for cell in np.flatnonzero(on_path).tolist():
        degree = sum(1 for other in adjacent[cell] if on_path[other])
        expected = 1 if cell in (start, goal) else 2
        if degree != expected:
            what = "start" if cell == start else "goal" if cell == goal else "route cell"
            return [], (
                f"{what} {cell} (row {cell // cols}, col {cell % cols}) has {degree} route neighbours, "
                f"expected {expected}: not one simple path"
            )
    # Degrees are right, so the walk from the start ends at the goal; it must pass every marked cell.
    path = [start]
    previous, cell = -1, start
    while cell != goal:
        following = [other for other in adjacent[cell] if on_path[other] and other != previous]
        previous, cell = cell, following[0]
        path.append(cell)
    if len(path) != length:
        return path, (
            f"the path from the start reaches the goal after {len(path)} cells but {length} are marked: "
            "stray route cells not connected to it"
        )
    return path, ""


def _barred_cell(inputs: np.ndarray, costs: np.ndarray, route_mask: np.ndarray, cols: int) -> str:
    """Why the first route cell that may not be marked is wrong ("" when every one may be)."""
    for cell in np.flatnonzero(route_mask).tolist():
        if inputs[cell] in (spec.START, spec.GOAL):
            return f"cell {cell} overwrites the {'start' if inputs[cell] == spec.START else 'goal'}"
        if costs[cell] < 0:
            return (
                f"route cell {cell} (row {cell // cols}, col {cell % cols}) has token {inputs[cell]}, "
                "which this vehicle may not enter"
            )
    return ""


def check_route(
    input_grid: np.ndarray, label_grid: np.ndarray, cost_row: np.ndarray, rows: int, cols: int
) -> RouteCheck:
    """Is `label_grid` (a label or a prediction) a valid route for the vehicle whose cost-table row is given?
    Optimal routes never touch themselves (inner cells cost > 0): 3 route neighbours mean no route."""
    size = rows * cols
    inputs = np.asarray(input_grid, dtype=np.int64).reshape(-1)
    labels = np.asarray(label_grid, dtype=np.int64).reshape(-1)
    if inputs.size != size or labels.size != size:
        return RouteCheck(
            False, f"grid has {labels.size} cells, input {inputs.size}, expected {size}", None, 0
        )
    route_mask = labels == spec.ROUTE
    length = int(route_mask.sum()) + 2
    starts = np.flatnonzero(inputs == spec.START)
    goals = np.flatnonzero(inputs == spec.GOAL)
    differs = np.flatnonzero(~route_mask & (labels != inputs))
    if starts.size != 1 or goals.size != 1:
        reason = f"input has {starts.size} start and {goals.size} goal cells, expected 1 each"
    elif differs.size:
        cell = int(differs[0])
        reason = (
            f"cell {cell} (row {cell // cols}, col {cell % cols}) is {labels[cell]} but the input has "
            f"{inputs[cell]} ({differs.size} such cells)"
        )
    else:
        costs = cell_costs(inputs, cost_row)
        reason = _barred_cell(inputs, costs, route_mask, cols)
        if not reason:
            path, reason = _walk(route_mask, int(starts[0]), int(goals[0]), rows, cols, length)
    if reason:
        return RouteCheck(False, reason, None, length)
    return RouteCheck(True, "ok", route_cost(costs, path), length, tuple(path))


def manhattan(a: int, b: int, cols: int) -> int:
    """Manhattan distance between two flat cells: the moves of the shortest walk, ignoring what is in the way."""
    (row_a, col_a), (row_b, col_b) = divmod(a, cols), divmod(b, cols)
    return abs(row_a - row_b) + abs(col_a - col_b)


def detour_cells(path: tuple[int, ...] | list[int], cols: int) -> int:
    """Cells a route has beyond the Manhattan walk between its ends: 0 = monotone; always even."""
    return len(path) - 1 - manhattan(path[0], path[-1], cols) if path else 0


def turns(path: tuple[int, ...] | list[int]) -> int:
    """Changes of direction along a route (flat cells, consecutive cells adjacent)."""
    steps = np.diff(np.asarray(path, dtype=np.int64))
    return int((steps[1:] != steps[:-1]).sum()) if steps.size > 1 else 0


def best_monotone(costs: np.ndarray, start: int, goal: int, rows: int, cols: int) -> RouteSolution:
    """Cheapest route of Manhattan length (every move towards the goal), evaluate's "monotone path" baseline.

    It stays in the start-goal rectangle and enters each cell by the row or the column step, so one dynamic
    programming pass settles every cell. Ties go to the row step. Same cost rule as `solve`.
    """
    costs = np.asarray(costs, dtype=np.int64).reshape(-1)
    if costs.size != rows * cols:
        raise ValueError(f"costs has {costs.size} cells, expected rows*cols = {rows * cols}")
    (s_row, s_col), (g_row, g_col) = divmod(start, cols), divmod(goal, cols)
    row_step = 1 if g_row >= s_row else -1
    col_step = 1 if g_col >= s_col else -1
    height, width = abs(g_row - s_row) + 1, abs(g_col - s_col) + 1
    cost = costs.tolist()
    best: list[list[float]] = [[UNREACHED] * width for _ in range(height)]
    came_from_row = [[False] * width for _ in range(height)]  # True: entered by the row step
    best[0][0] = 0

    def cell_at(i: int, j: int) -> int:
        return (s_row + i * row_step) * cols + s_col + j * col_step

    for i in range(height):
        for j in range(width):
            cell = cell_at(i, j)
            step = 0 if cell == goal else cost[cell]
            if (i == 0 and j == 0) or step < 0:
                continue
            from_row = best[i - 1][j] if i > 0 else UNREACHED
            from_col = best[i][j - 1] if j > 0 else UNREACHED
            if min(from_row, from_col) == UNREACHED:
                continue
            came_from_row[i][j] = from_row <= from_col
            best[i][j] = min(from_row, from_col) + step
    if best[height - 1][width - 1] == UNREACHED:
        return RouteSolution(None, ())
    i, j = height - 1, width - 1
    path = [goal]
    while i or j:
        i, j = (i - 1, j) if came_from_row[i][j] else (i, j - 1)
        path.append(cell_at(i, j))
    return RouteSolution(int(best[height - 1][width - 1]), tuple(reversed(path)))


def mark_route(grid: np.ndarray, path: tuple[int, ...]) -> np.ndarray:
    """The label of `path` on `grid`: a copy with the cells between start and goal set to the route token."""
    label = np.array(grid, copy=True)
    if len(path) > 2:
        label.reshape(-1)[list(path[1:-1])] = spec.ROUTE
    return label


@cache
def _grid_edges(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """All directed 4-neighbour moves (source, target) of a rows x cols grid, flat indices (`neighbours`)."""
    adjacent = neighbours(rows, cols)
    sources = np.repeat(np.arange(rows * cols), [len(cells) for cells in adjacent])
    return sources, np.array([cell for cells in adjacent for cell in cells], dtype=np.int64)


def dijkstra_optimum(
    cell_cost: np.ndarray, start: int, goal: int, rows: int, cols: int
) -> tuple[int | None, np.ndarray]:
    """Optimal cost by scipy's Dijkstra and the mask of cells on at least one optimal route.

    Written apart from the generator's A* (`solve`) so that a bug there cannot hide here (validate's
    re-check, evaluate's optimum). Moves into the start and out of the goal are left out; the free step into
    the goal weighs 1 (subtracted again). v is on an optimal route iff dist(start, v) + dist(v, goal) is the
    optimum; inner cells cost >= 1, so the optimum is unique iff this mask is exactly one route's cells.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    size = rows * cols
    sources, targets = _grid_edges(rows, cols)
    cost = np.asarray(cell_cost, dtype=np.int64)
    usable = (cost[sources] >= 0) & (cost[targets] >= 0) & (targets != start) & (sources != goal)
    sources, targets = sources[usable], targets[usable]
    weights = cost[targets].astype(np.float64) + (targets == goal)
    graph = csr_matrix((weights, (sources, targets)), shape=(size, size))
    from_start = dijkstra(graph, directed=True, indices=start)
    to_goal = dijkstra(graph.T.tocsr(), directed=True, indices=goal)  # the reversed graph
    best = from_start[goal]
    if not np.isfinite(best):
        return None, np.zeros(size, dtype=bool)
    return int(best) - 1, (from_start + to_goal) == best
