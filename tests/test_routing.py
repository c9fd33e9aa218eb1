"""A*, optimal-route counting and route checking on hand-made and random grids."""

import networkx as nx
import numpy as np
import pytest

from hrm.data import routing, spec

S, G, R = spec.START, spec.GOAL, spec.ROUTE
B = spec.BUILDING
ST = spec.road_token("street", 0)  # street, free
AV = spec.road_token("avenue", 0)
JAM = spec.road_token("street", 3)
X = spec.CLOSED

# One vehicle: street 5, avenue 2, +10 on a jam; closed and buildings barred.
COST_ROW = np.full(spec.VOCAB_SIZE, spec.BLOCKED, dtype=np.int64)
COST_ROW[ST], COST_ROW[AV], COST_ROW[JAM] = 5, 2, 15
COST_ROW[S] = COST_ROW[G] = 0


def grid(rows: list[list[int]]) -> tuple[np.ndarray, int, int]:
    array = np.array(rows, dtype=np.int64)
    return array.reshape(-1), array.shape[0], array.shape[1]


def solve_grid(rows: list[list[int]], cap: int = 10) -> routing.RouteSolution:
    cells, n_rows, n_cols = grid(rows)
    costs = routing.cell_costs(cells, COST_ROW)
    start, goal = int(np.flatnonzero(cells == S)[0]), int(np.flatnonzero(cells == G)[0])
    return routing.solve(costs, start, goal, n_rows, n_cols, count_cap=cap)


def test_symmetric_square_has_two_optimal_routes():
    solution = solve_grid([[S, ST], [ST, G]])
    assert solution.cost == 5 and solution.optimal_routes == 2


def test_open_3x3_counts_all_six_monotone_routes():
    solution = solve_grid([[S, ST, ST], [ST, ST, ST], [ST, ST, G]])
    # every monotone route enters 3 streets: C(4, 2) = 6 of them
    assert solution.cost == 15 and solution.optimal_routes == 6
    assert solve_grid([[S, ST, ST], [ST, ST, ST], [ST, ST, G]], cap=2).optimal_routes == 2


def test_cheaper_avenue_breaks_the_tie_and_is_the_route():
    solution = solve_grid([[S, AV], [ST, G]])
    assert solution.cost == 2 and solution.optimal_routes == 1
    assert solution.path == (0, 1, 3)


def test_barred_cells_are_avoided():
    rows = [
        [S, ST, ST, ST],
        [B, X, B, ST],
        [G, ST, ST, ST],
    ]
    solution = solve_grid(rows)
    assert solution.optimal_routes == 1
    assert solution.cost == 7 * 5  # the only way round: 7 streets, start/goal free
    cells, _, _ = grid(rows)
    assert all(COST_ROW[cells[c]] >= 0 for c in solution.path)
    assert 5 not in solution.path  # the closed cell


def test_unreachable_goal():
    solution = solve_grid([[S, B, G], [ST, X, ST]])
    assert solution.cost is None and solution.path == () and solution.optimal_routes == 0


def _brute_force(costs: np.ndarray, start: int, goal: int, rows: int, cols: int) -> tuple[int | None, int]:
    """Every simple path by depth-first search: the optimum and how many paths reach it."""
    adjacent = routing.neighbours(rows, cols)
    best: list = [None, 0]

    def walk(cell: int, visited: set, total: int) -> None:
        if cell == goal:
            if best[0] is None or total < best[0]:
                best[0], best[1] = total, 1
            elif total == best[0]:
                best[1] += 1
            return
        for nxt in adjacent[cell]:
            if nxt in visited or costs[nxt] < 0:
                continue
            step = 0 if nxt == goal else int(costs[nxt])
            visited.add(nxt)
            walk(nxt, visited, total + step)
            visited.remove(nxt)

    walk(start, {start}, 0)
    return best[0], best[1]


def _random_costs(rng: np.random.Generator, rows: int, cols: int, barred: float, top: int) -> np.ndarray:
    costs = rng.integers(1, top + 1, size=rows * cols)
    costs[rng.random(rows * cols) < barred] = -1
    return costs


def test_astar_optimum_and_count_match_brute_force_on_small_grids():
    rng = np.random.default_rng(7)
    checked = ties = 0
    for _ in range(300):
        rows, cols = int(rng.integers(2, 5)), int(rng.integers(2, 5))
        costs = _random_costs(rng, rows, cols, barred=0.25, top=3)
        start, goal = (int(c) for c in rng.choice(rows * cols, size=2, replace=False))
        costs[[start, goal]] = spec.ENDPOINT_COST  # start and goal tokens are always enterable, free
        expected_cost, expected_count = _brute_force(costs, start, goal, rows, cols)
        solution = routing.solve(costs, start, goal, rows, cols, count_cap=1000)
        assert solution.cost == expected_cost
        if expected_cost is None:
            continue
        checked += 1
        ties += expected_count > 1
        assert solution.optimal_routes == expected_count
        assert solution.path[0] == start and solution.path[-1] == goal
        assert routing.route_cost(costs, solution.path) == expected_cost
    assert checked > 150 and ties > 20  # the test really exercised both cases


def test_astar_matches_networkx_dijkstra_on_random_grids():
    rng = np.random.default_rng(11)
    for _ in range(40):
        rows, cols = int(rng.integers(8, 25)), int(rng.integers(8, 25))
        costs = _random_costs(rng, rows, cols, barred=0.3, top=20)
        start, goal = (int(c) for c in rng.choice(rows * cols, size=2, replace=False))
        graph = nx.DiGraph()
        for u, adjacent in enumerate(routing.neighbours(rows, cols)):
            for v in adjacent:
                if v == goal:
                    graph.add_edge(u, v, weight=0)
                elif v != start and costs[v] >= 0:
                    graph.add_edge(u, v, weight=int(costs[v]))
        try:
            expected = nx.dijkstra_path_length(graph, start, goal)
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            expected = None
        solution = routing.solve(costs, start, goal, rows, cols)
        assert solution.cost == expected
        if expected is not None:
            free_ends = costs.copy()
            free_ends[[start, goal]] = 0
            assert routing.route_cost(free_ends, solution.path) == expected
            path_ok = all(free_ends[c] >= 0 for c in solution.path)
            steps_ok = all(
                b in routing.neighbours(rows, cols)[a]
                for a, b in zip(solution.path[:-1], solution.path[1:], strict=True)
            )
            assert path_ok and steps_ok


# ---- check_route ----
INPUT = [
    [S, ST, ST, ST],
    [ST, B, B, ST],
    [ST, ST, ST, G],
]


def check(label_rows: list[list[int]]) -> routing.RouteCheck:
    cells, rows, cols = grid(INPUT)
    label, _, _ = grid(label_rows)
    return routing.check_route(cells, label, COST_ROW, rows, cols)


def test_valid_route_has_cost_length_and_order():
    result = check([[S, R, R, R], [ST, B, B, R], [ST, ST, ST, G]])
    assert result.valid, result.reason
    assert result.cost == 4 * 5 and result.length == 6
    assert result.path == (0, 1, 2, 3, 7, 11)


def test_disconnected_route_is_rejected():
    result = check([[S, R, ST, R], [ST, B, B, R], [ST, ST, ST, G]])
    assert not result.valid and "route neighbours" in result.reason and result.cost is None


def test_stray_route_cell_is_rejected():
    # a valid route along the bottom plus a stray marked cell at the top right
    result = check([[S, ST, ST, R], [R, B, B, ST], [R, R, R, G]])
    assert not result.valid and "cell 3" in result.reason


def test_stray_loop_is_rejected():
    cells, rows, cols = grid([[S, ST, ST, ST, ST], [ST, ST, ST, ST, ST], [ST, ST, ST, ST, G]])
    label, _, _ = grid([[S, ST, ST, R, R], [R, ST, ST, R, R], [R, R, R, R, G]])
    result = routing.check_route(cells, label, COST_ROW, rows, cols)
    assert not result.valid


def test_route_over_a_barred_cell_is_rejected():
    cells, rows, cols = grid([[S, X, G]])
    label, _, _ = grid([[S, R, G]])
    result = routing.check_route(cells, label, COST_ROW, rows, cols)
    assert not result.valid and "may not enter" in result.reason


def test_changed_non_route_cell_is_rejected():
    result = check([[S, R, R, R], [ST, B, ST, R], [ST, ST, ST, G]])
    assert not result.valid and "cell 6" in result.reason


def test_missing_route_is_rejected():
    result = check(INPUT)
    assert not result.valid and result.length == 2


@pytest.mark.parametrize("bad", [[[R, R, R, R], [ST, B, B, R], [ST, ST, ST, G]]])
def test_overwritten_start_is_rejected(bad):
    assert not check(bad).valid


def test_generated_labels_check_out():
    """A* routes written as labels pass check_route with the same cost."""
    rng = np.random.default_rng(3)
    tokens = np.array([ST, AV, JAM, B, X])
    for _ in range(30):
        rows, cols = 12, 12
        cells = tokens[rng.choice(len(tokens), size=rows * cols, p=[0.4, 0.2, 0.1, 0.2, 0.1])]
        start, goal = (int(c) for c in rng.choice(rows * cols, size=2, replace=False))
        cells[start], cells[goal] = S, G
        solution = routing.solve(routing.cell_costs(cells, COST_ROW), start, goal, rows, cols)
        if solution.cost is None:
            continue
        label = cells.copy()
        label[list(solution.path[1:-1])] = R
        result = routing.check_route(cells, label, COST_ROW, rows, cols)
        assert result.valid, result.reason
        assert result.cost == solution.cost and result.path == solution.path


# ---- route geometry and the monotone-path dynamic program ---------------------------------------------------


def _monotone_brute_force(costs: np.ndarray, start: int, goal: int, cols: int) -> int | None:
    """Every path of Manhattan length enumerated as an order of row and column moves: the cheapest cost."""
    from itertools import combinations

    (s_row, s_col), (g_row, g_col) = divmod(start, cols), divmod(goal, cols)
    dr, dc = abs(g_row - s_row), abs(g_col - s_col)
    r_step, c_step = (1 if g_row >= s_row else -1), (1 if g_col >= s_col else -1)
    best = None
    for row_moves in combinations(range(dr + dc), dr):
        row, col, total = s_row, s_col, 0
        for move in range(dr + dc):
            if move in row_moves:
                row += r_step
            else:
                col += c_step
            cell = row * cols + col
            step = 0 if cell == goal else int(costs[cell])
            if step < 0:
                break
            total += step
        else:
            best = total if best is None else min(best, total)
    return best


def test_monotone_dp_equals_brute_force_on_small_grids():
    rng = np.random.default_rng(7)
    checked = blocked = 0
    for trial in range(300):
        rows, cols = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        costs = _random_costs(rng, rows, cols, barred=0.25, top=5)
        start, goal = (int(c) for c in rng.choice(rows * cols, size=2, replace=False))
        costs[[start, goal]] = 0
        expected = _monotone_brute_force(costs, start, goal, cols)
        found = routing.best_monotone(costs, start, goal, rows, cols)
        assert found.cost == expected, (trial, rows, cols, start, goal)
        if expected is None:
            blocked += 1
            assert found.path == ()
            continue
        checked += 1
        assert found.path[0] == start and found.path[-1] == goal
        assert routing.detour_cells(found.path, cols) == 0
        assert routing.route_cost(costs, found.path) == expected
        assert all(costs[c] >= 0 for c in found.path)
        # never cheaper than the true optimum, and equal to it whenever the optimum is monotone
        optimum = routing.solve(costs, start, goal, rows, cols)
        assert optimum.cost is not None and optimum.cost <= expected
        if routing.detour_cells(optimum.path, cols) == 0:
            assert optimum.cost == expected
    assert checked > 100 and blocked > 10  # both cases exercised


def test_monotone_dp_on_hand_made_maps():
    # the direct walk is open: the cheapest monotone route is the optimum
    direct = solve_grid([[S, ST, ST], [AV, AV, G]])
    cells, rows, cols = grid([[S, ST, ST], [AV, AV, G]])
    mono = routing.best_monotone(routing.cell_costs(cells, COST_ROW), 0, 5, rows, cols)
    assert mono.cost == direct.cost == 4 and mono.path == direct.path == (0, 3, 4, 5)
    # a wall between start and goal: no monotone route; the optimum goes round it (detour 2)
    walled = [[S, X, G], [ST, X, ST], [ST, ST, ST]]
    cells, rows, cols = grid(walled)
    mono = routing.best_monotone(routing.cell_costs(cells, COST_ROW), 0, 2, rows, cols)
    optimum = solve_grid(walled)
    assert mono.cost is None and optimum.cost == 25
    assert routing.detour_cells(optimum.path, cols) == 4 and routing.turns(optimum.path) == 2


def test_detour_and_turns_of_a_route():
    cols = 4
    assert routing.manhattan(0, 15, cols) == 6
    assert routing.detour_cells((0, 1, 2, 3, 7, 11, 15), cols) == 0
    assert routing.turns((0, 1, 2, 3, 7, 11, 15)) == 1
    assert routing.detour_cells((1, 0, 4, 5, 6, 2), cols) == 4  # 1 -> 2 (one move) the long way round
    assert routing.turns((1, 0, 4, 5, 6, 2)) == 3
    label = routing.mark_route(np.array([S, ST, ST, G]), (0, 1, 2, 3))
    assert label.tolist() == [S, R, R, G]


def test_one_dijkstra_in_the_project():
    """validate's re-check and evaluate's optimum use routing.dijkstra_optimum; nobody else builds a graph."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    users = sorted(
        p.relative_to(repo).as_posix()
        for p in (repo / "hrm").rglob("*.py")
        if "csgraph" in p.read_text(encoding="utf-8")
    )
    assert users == ["hrm/data/routing.py"]
