"""Shortest routes on a token grid: A* with optimal-route counting, and route checking.

Shared by generate (labels), validate (re-checks) and evaluate (is a predicted route valid, what does it cost).
`dijkstra_optimum` is a second, independent solver (scipy's Dijkstra) for validate's and evaluate's optimum.

Rules (the same as `CostModel.to_dict()["cost_rule"]`): 4-neighbour moves; moving into a cell costs that cell's
entering cost for the vehicle (`cost_table[puzzle_id][token]`, -1 = barred); start and goal cost 0; the route cost
is the sum of the entering costs of every cell after the start. Costs are exact integers, so "tied optimum" is an
exact notion and ties are counted, not guessed.

Grids are flat, row-major (`index = row * cols + col`), like the model's sequences; 2-D arrays are flattened.
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
        cells = []
        if row > 0:
            cells.append(index - cols)
        if col > 0:
            cells.append(index - 1)
        if col < cols - 1:
            cells.append(index + 1)
        if row < rows - 1:
            cells.append(index + cols)
        result.append(tuple(cells))
    return tuple(result)


def cell_costs(grid: np.ndarray, cost_row: np.ndarray) -> np.ndarray:
    """Entering cost of every cell of `grid` (flat int64, -1 = barred) for one vehicle's cost-table row."""
    return np.asarray(cost_row, dtype=np.int64)[np.asarray(grid, dtype=np.int64).reshape(-1)]


@dataclass(frozen=True)
class RouteSolution:
    """Result of `solve`. `optimal_routes` is capped at the `count_cap` asked for (2 is enough to see a tie)."""

    cost: int | None  # None: the goal cannot be reached
    path: tuple[int, ...]  # flat cell indices, start first, goal last; empty when unreachable
    optimal_routes: int  # number of distinct minimum-cost routes, min(true count, count_cap)
    expanded: int  # cells settled by A* (for speed figures)


def _heuristic(costs: np.ndarray, start: int, goal: int, rows: int, cols: int) -> list[int]:
    """Admissible and consistent lower bound on the cost from each cell to the goal.

    Every step except the last one (into the goal, cost 0) enters a cell that costs at least `min_step`,
    so `min_step * max(manhattan - 1, 0)` never overestimates, and it drops by at most `min_step` per move.
    """
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
    """Minimum-cost route from `start` to `goal` by A*, plus the number of optimal routes (capped).

    The number of optimal routes into a cell is the sum over its tight predecessors u (g[u] + cost[v] == g[v]).
    A* pops cells by (f, g): with a consistent heuristic a tight predecessor has f[u] <= f[v] and, as costs are
    positive, g[u] < g[v], so it is always popped (and its count final) first. The free step into the goal is
    the one exception (equal g), so the goal sorts after every other cell with the same (f, g). Counts are thus
    final when a cell is popped, and the search stops at the goal, as plain A* does.
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
    cost[start] = spec.ENDPOINT_COST
    cost[goal] = spec.ENDPOINT_COST
    heuristic = _heuristic(costs, start, goal, rows, cols)
    adjacent = neighbours(rows, cols)

    g: list[float] = [UNREACHED] * size
    count = [0] * size
    parent = [-1] * size
    settled = [False] * size
    g[start] = 0
    count[start] = 1
    heap = [(heuristic[start], 0, 0, start)]
    expanded = 0
    while heap:
        _, g_u, _, u = heapq.heappop(heap)
        if settled[u]:
            continue
        settled[u] = True
        expanded += 1
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
        return RouteSolution(None, (), 0, expanded)
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    path.reverse()
    return RouteSolution(int(g[goal]), tuple(path), count[goal], expanded)


def route_cost(costs: np.ndarray, path: tuple[int, ...] | list[int]) -> int:
    """Cost of a route given as flat cells (start first): entering costs of the cells between start and goal."""
    costs = np.asarray(costs, dtype=np.int64).reshape(-1)
    return int(costs[list(path[1:-1])].sum()) if len(path) > 2 else 0


def extract_route(label_grid: np.ndarray) -> np.ndarray:
    """Flat indices (ascending) of the cells a label or prediction marks as route."""
    return np.flatnonzero(np.asarray(label_grid).reshape(-1) == spec.ROUTE)


@dataclass(frozen=True)
class RouteCheck:
    """Verdict on one label or predicted grid.

    valid: the ROUTE cells plus start and goal form one simple 4-neighbour path from start to goal, every route
    cell is enterable by the vehicle, and every non-route cell equals the input.
    length: cells marked ROUTE plus start and goal (the route length in cells when valid).
    path: the route in order (start ... goal) when valid, else empty.
    """

    valid: bool
    reason: str
    cost: int | None
    length: int
    path: tuple[int, ...] = field(default=())


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
    # Degrees are right; the walk from the start must reach the goal through every marked cell.
    path = [start]
    previous, cell = -1, start
    while cell != goal:
        following = [other for other in adjacent[cell] if on_path[other] and other != previous]
        previous, cell = cell, following[0]
        path.append(cell)
        if len(path) > length:
            break
    if len(path) != length:
        return path, (
            f"the path from the start reaches the goal after {len(path)} cells but {length} are marked: "
            "stray route cells not connected to it"
        )
    return path, ""


def check_route(
    input_grid: np.ndarray,
    label_grid: np.ndarray,
    cost_row: np.ndarray,
    rows: int,
    cols: int,
) -> RouteCheck:
    """Is `label_grid` (a label or a prediction) a valid route for the vehicle whose cost-table row is given?

    Optimal routes have positive-cost cells between start and goal, so they never touch themselves: a cell
    with three route neighbours, or two route cells side by side that are not consecutive, is not a route.
    """
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
    if starts.size != 1 or goals.size != 1:
        return RouteCheck(
            False, f"input has {starts.size} start and {goals.size} goal cells, expected 1 each", None, length
        )
    start, goal = int(starts[0]), int(goals[0])

    differs = np.flatnonzero(~route_mask & (labels != inputs))
    if differs.size:
        cell = int(differs[0])
        return RouteCheck(
            False,
            f"cell {cell} (row {cell // cols}, col {cell % cols}) is {labels[cell]} but the input has "
            f"{inputs[cell]} ({differs.size} such cells)",
            None,
            length,
        )
    route_cells = np.flatnonzero(route_mask)
    costs = cell_costs(inputs, cost_row)
    for cell in route_cells.tolist():
        if inputs[cell] in (spec.START, spec.GOAL):
            return RouteCheck(
                False,
                f"cell {cell} overwrites the {'start' if inputs[cell] == spec.START else 'goal'}",
                None,
                length,
            )
        if costs[cell] < 0:
            return RouteCheck(
                False,
                f"route cell {cell} (row {cell // cols}, col {cell % cols}) has token {inputs[cell]}, "
                "which this vehicle may not enter",
                None,
                length,
            )

    path, reason = _walk(route_mask, start, goal, rows, cols, length)
    if reason:
        return RouteCheck(False, reason, None, length)
    return RouteCheck(True, "ok", route_cost(costs, path), length, tuple(path))


# ---- route geometry: how far a route strays from the straight walk --------------------------------------


def manhattan(a: int, b: int, cols: int) -> int:
    """Manhattan distance between two flat cells: the moves of the shortest walk, ignoring what is in the way."""
    (row_a, col_a), (row_b, col_b) = divmod(a, cols), divmod(b, cols)
    return abs(row_a - row_b) + abs(col_a - col_b)


def detour_cells(path: tuple[int, ...] | list[int], cols: int) -> int:
    """Cells a route has beyond the Manhattan walk between its ends: 0 = monotone (never steps away from the
    goal). Always even on a 4-neighbour grid: every step away must be stepped back."""
    return len(path) - 1 - manhattan(path[0], path[-1], cols) if path else 0


def turns(path: tuple[int, ...] | list[int]) -> int:
    """Changes of direction along a route (flat cells, consecutive cells adjacent)."""
    steps = np.diff(np.asarray(path, dtype=np.int64))
    return int((steps[1:] != steps[:-1]).sum()) if steps.size > 1 else 0


@dataclass(frozen=True)
class MonotoneRoute:
    """Result of `best_monotone`: the cheapest route that only ever moves towards the goal."""

    cost: int | None  # None: every monotone route is blocked
    path: tuple[int, ...]  # flat cells, start first, goal last; empty when blocked


def best_monotone(costs: np.ndarray, start: int, goal: int, rows: int, cols: int) -> MonotoneRoute:
    """Cheapest route of Manhattan length (every move towards the goal) by dynamic programming.

    Such a route stays in the rectangle spanned by start and goal and enters each of its cells from one of
    two cells (the row or the column step towards it), so one pass in order of distance from the start
    settles every cell: no search. Where it matches the optimum, an example needs no search (the
    evaluation's "monotone path" baseline). Ties go to the row step (deterministic). Same cost rule as
    `solve`: entering a cell costs `costs[cell]` (< 0 = barred), the start and the goal cost 0.
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
    for i in range(height):
        for j in range(width):
            if i == 0 and j == 0:
                continue
            cell = (s_row + i * row_step) * cols + s_col + j * col_step
            step = 0 if cell == goal else cost[cell]
            if step < 0:
                continue
            from_row = best[i - 1][j] if i > 0 else UNREACHED
            from_col = best[i][j - 1] if j > 0 else UNREACHED
            if from_row == UNREACHED and from_col == UNREACHED:
                continue
            came_from_row[i][j] = from_row <= from_col
            best[i][j] = min(from_row, from_col) + step
    if best[height - 1][width - 1] == UNREACHED:
        return MonotoneRoute(None, ())
    i, j = height - 1, width - 1
    path = []
    while True:
        path.append((s_row + i * row_step) * cols + s_col + j * col_step)
        if i == 0 and j == 0:
            break
        if came_from_row[i][j]:
            i -= 1
        else:
            j -= 1
    path.reverse()
    return MonotoneRoute(int(best[height - 1][width - 1]), tuple(path))


def mark_route(grid: np.ndarray, path: tuple[int, ...]) -> np.ndarray:
    """The label of `path` on `grid`: a copy with the cells between start and goal set to the route token."""
    label = np.array(grid, copy=True)
    if len(path) > 2:
        label.reshape(-1)[list(path[1:-1])] = spec.ROUTE
    return label


# ---- an independent optimum: scipy's Dijkstra (validate and evaluate) ----------------------------------


@cache
def _grid_edges(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """All directed 4-neighbour moves (source, target) of a rows x cols grid, flat indices, sorted by source."""
    index = np.arange(rows * cols).reshape(rows, cols)
    pairs = [
        (index[:, :-1], index[:, 1:]),  # right
        (index[:, 1:], index[:, :-1]),  # left
        (index[:-1, :], index[1:, :]),  # down
        (index[1:, :], index[:-1, :]),  # up
    ]
    sources = np.concatenate([a.reshape(-1) for a, _ in pairs])
    targets = np.concatenate([b.reshape(-1) for _, b in pairs])
    order = np.lexsort((targets, sources))
    return sources[order], targets[order]


def _csr(rows_of_edges: np.ndarray, columns: np.ndarray, weights: np.ndarray, size: int):
    """CSR matrix from edges already sorted by row (cheaper than scipy's COO conversion)."""
    from scipy.sparse import csr_matrix

    indptr = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows_of_edges, minlength=size), out=indptr[1:])
    return csr_matrix((weights, columns, indptr), shape=(size, size))


def dijkstra_optimum(
    cell_cost: np.ndarray, start: int, goal: int, rows: int, cols: int
) -> tuple[int | None, np.ndarray]:
    """Optimal route cost by scipy's Dijkstra and the mask of cells lying on at least one optimal route.

    The one Dijkstra of the project (validate's re-check, evaluate's optimum), written apart from the
    generator's A* (`solve`) so that a bug there cannot hide here. Moves into the start and out
    of the goal are left out (a route is a simple path between them); the free step into the goal is given
    weight 1 (subtracted again), because every route enters the goal exactly once, last. A cell v is on an
    optimal route iff dist(start, v) + dist(v, goal) equals the optimum. Intermediate cells cost >= 1, so
    an optimal route never touches itself; two distinct optimal routes therefore differ in their cell sets,
    and the optimum is unique iff this mask is exactly one route's cells.
    """
    from scipy.sparse.csgraph import dijkstra

    size = rows * cols
    sources, targets = _grid_edges(rows, cols)
    cost = np.asarray(cell_cost, dtype=np.int64)
    usable = (cost[sources] >= 0) & (cost[targets] >= 0) & (targets != start) & (sources != goal)
    sources, targets = sources[usable], targets[usable]
    weights = cost[targets].astype(np.float64) + (targets == goal)
    from_start = dijkstra(_csr(sources, targets, weights, size), directed=True, indices=start)
    # the reversed graph: same edges read target -> source; sort them by their new row (the target)
    order = np.argsort(targets, kind="stable")
    to_goal = dijkstra(
        _csr(targets[order], sources[order], weights[order], size), directed=True, indices=goal
    )
    best = from_start[goal]
    if not np.isfinite(best):
        return None, np.zeros(size, dtype=bool)
    return int(best) - 1, (from_start + to_goal) == best
