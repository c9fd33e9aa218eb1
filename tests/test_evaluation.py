"""Evaluation: route metrics on hand-made grids, segment/halting accounting, and the stage end to end."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pytest

from hrm.data import routing, spec
from hrm.evaluation import metrics as M
from hrm.evaluation import runner
from hrm.evaluation.data import load_route_task, load_split
from hrm.io import UserError
from tests.routing_layout import paper_cost_model, write_routing_dataset

S, G, R, B = spec.START, spec.GOAL, spec.ROUTE, spec.BUILDING
ST = spec.road_token("street", 0)  # bike: 4, car: 4
HW = spec.road_token("highway", 0)  # barred to bikes
BIKE = 1


def task_for(grid: np.ndarray) -> M.RouteTask:
    return M.RouteTask(rows=grid.shape[0], cols=grid.shape[1], cost_table=paper_cost_model().cost_table())


def score_one(grid: np.ndarray, label: np.ndarray, pred: np.ndarray, vehicle: int = BIKE) -> M.ExampleScores:
    task = task_for(grid)
    inputs, labels, preds = (a.reshape(1, -1) for a in (grid, label, pred))
    ids = np.array([vehicle])
    optimum = M.optimal_costs(inputs, ids, task)
    return M.score_predictions(inputs, preds, labels, ids, 0, task, optimum), optimum


def with_route(grid: np.ndarray, cells: list[tuple[int, int]]) -> np.ndarray:
    out = grid.copy()
    for r, c in cells:
        out[r, c] = R
    return out


# 3x4 open streets: 10 monotone routes all cost 4 cells x 4 = 16 for a bike.
OPEN = np.array([[S, ST, ST, ST], [ST, ST, ST, ST], [ST, ST, ST, G]])
OPEN_LABEL = with_route(OPEN, [(0, 1), (0, 2), (0, 3), (1, 3)])


def test_prediction_equal_to_label_is_valid_and_optimal():
    scores, optimum = score_one(OPEN, OPEN_LABEL, OPEN_LABEL)
    assert optimum[0] == 16
    assert scores.exact[0] and scores.route_valid[0] and scores.route_optimal[0]
    assert scores.route_cost[0] == 16


def test_another_route_of_equal_cost_counts_as_optimal_but_not_exact():
    other = with_route(OPEN, [(1, 0), (2, 0), (2, 1), (2, 2)])
    scores, _ = score_one(OPEN, OPEN_LABEL, other)
    assert not scores.exact[0]
    assert scores.route_valid[0] and scores.route_optimal[0] and scores.route_cost[0] == 16
    values = M.aggregate(scores, np.array([16.0]))
    assert values["exact_accuracy"] == 0.0 and values["route_optimal_rate"] == 1.0
    assert values["route_cost_gap"] == 0.0


def test_copying_the_input_is_no_route():
    scores, _ = score_one(OPEN, OPEN_LABEL, OPEN)
    assert not scores.route_valid[0] and not scores.route_optimal[0]
    assert scores.token_accuracy[0] == pytest.approx(8 / 12)  # the map is most of the grid
    assert "route neighbours" in scores.route_reason[0]


def test_broken_route_is_invalid():
    broken = with_route(OPEN, [(0, 1), (0, 3), (1, 3)])  # (0, 2) missing
    scores, _ = score_one(OPEN, OPEN_LABEL, broken)
    assert not scores.route_valid[0] and not scores.route_optimal[0]
    assert np.isnan(scores.route_cost[0])


def test_route_over_a_barred_cell_is_invalid_for_that_vehicle_only():
    grid = OPEN.copy()
    grid[0, 2] = HW  # bikes may not use highways, cars may
    pred = with_route(grid, [(0, 1), (0, 2), (0, 3), (1, 3)])
    bike, _ = score_one(grid, pred, pred, vehicle=BIKE)
    car, _ = score_one(grid, pred, pred, vehicle=2)
    assert not bike.route_valid[0] and "may not enter" in bike.route_reason[0]
    assert car.route_valid[0]


def test_valid_longer_route_has_a_positive_cost_gap():
    grid = np.full((5, 5), ST)
    grid[2, 0], grid[2, 4] = S, G
    label = with_route(grid, [(2, 1), (2, 2), (2, 3)])  # 3 streets: 12
    detour = with_route(grid, [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4)])  # 5 streets: 20
    scores, optimum = score_one(grid, label, detour)
    assert optimum[0] == 12
    assert scores.route_valid[0] and not scores.route_optimal[0] and scores.route_cost[0] == 20
    values = M.aggregate(scores, optimum)
    assert values["route_valid_rate"] == 1.0 and values["route_optimal_rate"] == 0.0
    assert values["route_cost_gap"] == pytest.approx(20 / 12 - 1)


def test_cost_gap_is_none_when_no_route_is_valid():
    scores, optimum = score_one(OPEN, OPEN_LABEL, OPEN)
    assert M.aggregate(scores, optimum)["route_cost_gap"] is None


def test_dijkstra_optimum_agrees_with_the_generators_astar():
    rng = np.random.default_rng(5)
    table = paper_cost_model().cost_table()
    checked = 0
    for _ in range(40):
        grid = rng.integers(spec.ROAD_BASE, spec.CLOSED, size=49)
        grid[rng.random(49) < 0.15] = B
        grid[0], grid[48] = S, G
        for vehicle in range(1, 5):
            expected = routing.solve(routing.cell_costs(grid, table[vehicle]), 0, 48, 7, 7).cost
            assert M.optimal_route_cost(grid, table[vehicle], 7, 7) == expected
            checked += expected is not None
    assert checked >= 30  # reachable cases were compared too, not only "no route"


def test_grid_scores_skip_ignored_cells():
    labels = np.array([[0, 5, 6, 7]])
    preds = np.array([[3, 5, 6, 1]])
    scores = M.grid_scores(preds, labels, ignore_label_id=0)
    assert scores.token_accuracy[0] == pytest.approx(2 / 3) and not scores.exact[0]
    assert M.grid_scores(preds[:, :3], labels[:, :3], 0).exact[0]


# ---- segment and halting accounting ----


@dataclass
class FakeCarry:
    steps: object
    halted: object
    data: dict


class ScriptedHead:
    """Follows the ACT head contract with a known script per row, so the accounting can be checked exactly.

    Row r predicts its label from segment `solve_at[r]` on (its input before); q_halt > q_continue from
    segment `halt_at[r]` on. Both are read from the row's first two input cells, so the script survives
    padding and batching. Halts every row at `max_steps`, as HRM in eval mode.
    """

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.calls = 0

    def eval(self):
        return self

    @staticmethod
    def solve_at(inputs):
        return 1 + inputs[:, 1] % 5  # segments 1..5

    @staticmethod
    def halt_at(inputs):
        return 1 + inputs[:, 2] % 6  # 1..6; 6 > max_steps in the test means "never"

    def initial_carry(self, batch):
        import torch

        n = batch["inputs"].shape[0]
        return FakeCarry(torch.zeros(n, dtype=torch.int32), torch.ones(n, dtype=torch.bool), {})

    def __call__(self, carry, batch, return_keys=()):
        import torch

        self.calls += 1
        data = batch if bool(carry.halted.all()) else carry.data
        steps = torch.where(carry.halted, 0, carry.steps) + 1
        inputs, labels = data["inputs"], data["labels"].clone()
        labels[labels < 0] = 0
        solved = self.solve_at(inputs) <= steps
        preds = torch.where(solved[:, None], labels, inputs.long())
        q_halt = torch.where(self.halt_at(inputs) <= steps, 1.0, -1.0)
        halted = steps >= self.max_steps
        outputs = {"preds": preds, "q_halt_logits": q_halt, "q_continue_logits": torch.zeros_like(q_halt)}
        return FakeCarry(steps, halted, data), None, {}, outputs, halted.all()


@pytest.fixture(scope="module")
def routing_root(tmp_path_factory):
    return write_routing_dataset(tmp_path_factory.mktemp("routing"), train_bases=4, test_bases=5, size=6)


def test_segment_accounting_matches_the_script(routing_root):
    data = load_split(routing_root, "test")
    max_steps = 5
    head = ScriptedHead(max_steps)
    run = runner.run_segments(head, data, batch_size=6, halt_max_steps=max_steps, keep=[1, 2, 4, 8], device="cpu")
    assert sorted(run.preds_at) == [1, 2, 4, 5]  # 8 capped, halt_max_steps always kept
    assert head.calls == max_steps * -(-len(data) // 6)  # every batch, exactly halt_max_steps segments
    solve_at = ScriptedHead.solve_at(data.inputs)
    halt_at = ScriptedHead.halt_at(data.inputs)
    for k, preds in run.preds_at.items():
        solved = solve_at <= k
        assert np.array_equal(preds[solved], data.labels[solved])
        assert np.array_equal(preds[~solved], data.inputs[~solved])
    expected_steps = np.minimum(halt_at, max_steps)
    assert np.array_equal(run.halt_steps, expected_steps)
    halted_solved = solve_at <= expected_steps
    assert np.array_equal((run.halt_preds == data.labels).all(1), halted_solved)

    task = load_route_task(routing_root, data.metadata)
    names = paper_cost_model().identifiers()
    result = runner.evaluate_split(data, run, names, task).metrics
    for k in (1, 2, 4, 5):
        assert result["segments"][str(k)]["exact_accuracy"] == pytest.approx(np.mean(solve_at <= k))
        assert result["segments"][str(k)]["route_optimal_rate"] == pytest.approx(np.mean(solve_at <= k))
    assert result["exact_accuracy"] == 1.0 and result["route_optimal_rate"] == 1.0
    assert result["steps"] == pytest.approx(expected_steps.mean())
    assert result["q_halt"]["exact_accuracy"] == pytest.approx(halted_solved.mean())
    # final q_halt >= 0 exactly where halt_at <= max_steps; every row is right after 5 segments
    assert result["q_halt_accuracy"] == pytest.approx(np.mean(halt_at <= max_steps))
    assert result["copy_input"]["exact_accuracy"] == 0.0 and result["copy_input"]["route_valid_rate"] == 0.0
    assert result["labels"] == {"route_valid_rate": 1.0, "route_optimal_rate": 1.0}
    for vehicle, ident in (("bike", 1), ("truck", 4)):
        mask = data.identifiers == ident
        assert result[vehicle]["count"] == mask.sum() == 5
        assert result[vehicle]["steps"] == pytest.approx(expected_steps[mask].mean())


def test_head_halting_early_in_eval_is_refused(routing_root):
    data = load_split(routing_root, "test")
    head = ScriptedHead(max_steps=2)
    with pytest.raises(RuntimeError, match="all_halted"):
        runner.run_segments(head, data, batch_size=8, halt_max_steps=3, keep=[1], device="cpu")


def test_routing_json_that_does_not_fit_is_a_user_error(routing_root, tmp_path):
    data = load_split(routing_root, "test")
    bad = json.loads((routing_root / "routing.json").read_text())
    bad["cost_table"] = bad["cost_table"][:2]
    (tmp_path / "routing.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=re.escape("routing.json: field 'cost_table' has shape (2, 24)")):
        load_route_task(tmp_path, data.metadata)
    assert load_route_task(tmp_path / "nowhere", data.metadata) is None
