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
from hrm.evaluation.loop import PREDICTION_KEYS
from hrm.io import UserError
from tests.conftest import tiny_arch
from tests.routing_layout import REPO, paper_cost_model, write_routing_dataset

S, G, R, B = spec.START, spec.GOAL, spec.ROUTE, spec.BUILDING
ST = spec.road_token("street", 0)
HW = spec.road_token("highway", 0)
BIKE, CAR = 1, 2
# Hand-made cost table (not params.yaml, whose tuned costs may change): streets cost 4 for both vehicles,
# highways are barred to the bike and cost 2 for the car.
TABLE = np.full((3, spec.VOCAB_SIZE), spec.BLOCKED, dtype=np.int64)
TABLE[1:, [S, G]] = 0
TABLE[1:, ST] = 4
TABLE[CAR, HW] = 2


def task_for(grid: np.ndarray) -> M.RouteTask:
    return M.RouteTask(rows=grid.shape[0], cols=grid.shape[1], cost_table=TABLE)


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
    values = M.aggregate(scores)
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
    car, _ = score_one(grid, pred, pred, vehicle=CAR)
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
    values = M.aggregate(scores)
    assert values["route_valid_rate"] == 1.0 and values["route_optimal_rate"] == 0.0
    assert values["route_cost_gap"] == pytest.approx(20 / 12 - 1)


def test_cost_gap_is_none_when_no_route_is_valid():
    scores, optimum = score_one(OPEN, OPEN_LABEL, OPEN)
    assert M.aggregate(scores)["route_cost_gap"] is None


def test_a_row_is_count_and_the_registrys_metrics_in_its_order():
    """aggregate reads the registry: a fully scored row holds every metric, a grid-only row the grid ones;
    a run without a Q-head leaves q_halt_accuracy None, not out; the report's columns are the registry."""
    from dataclasses import replace

    from hrm.evaluation.report import COLUMNS

    scores, _ = score_one(OPEN, OPEN_LABEL, OPEN_LABEL)
    acted = replace(scores, q_halt_right=np.array([1.0]), halt_steps=np.array([3]))
    assert list(M.aggregate(acted)) == ["count", *M.METRICS]
    assert M.aggregate(acted)[M.STEPS] == 3.0 and M.aggregate(acted)[M.Q_HALT] == 1.0
    assert M.aggregate(replace(acted, q_halt_right=np.array([np.nan])))[M.Q_HALT] is None
    grid_only = M.grid_scores(OPEN_LABEL.reshape(1, -1), OPEN_LABEL.reshape(1, -1), 0)
    assert list(M.aggregate(grid_only)) == ["count", M.EXACT, M.TOKEN]
    assert [name for name, _ in COLUMNS] == list(M.METRICS)


def test_dvc_yaml_plot_columns_are_the_registrys_names():
    """dvc.yaml cannot import the registry: its plot columns must name what plots.segment_rows and
    plots.vehicle_rows write."""
    import yaml

    from hrm.evaluation import plots

    entries = {
        next(iter(e)).rsplit("/", 1)[-1]: next(iter(e.values()))
        for e in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    }
    segment_columns = {f"{split}_{name}" for split in ("test", "train") for name in plots.SEGMENT_METRICS}
    assert set(entries["segments.json"]["y"]) == segment_columns
    assert entries["vehicles.json"]["x"] in plots.VEHICLE_METRICS


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


# Hand-made baselines. MONOTONE_MAP (OPEN): every vehicle's optimum walks straight towards the goal.
# DETOUR_MAP: a building wall between start and goal, the only way is round it. SHORTCUT_MAP: the car takes
# the highway straight to the goal (monotone), the bike may not and goes round (a detour).
DETOUR_MAP = np.array([[S, B, G], [ST, B, ST], [ST, ST, ST]])
SHORTCUT_MAP = np.array([[S, HW, G], [ST, ST, ST]])


def baselines_on(grid: np.ndarray, vehicles: list[int]) -> dict[str, M.ExampleScores | np.ndarray]:
    task = task_for(grid)
    inputs = np.stack([grid.reshape(-1)] * len(vehicles))
    ids = np.array(vehicles)
    optimum = M.optimal_costs(inputs, ids, task)
    monotone_preds, monotone_cost = M.monotone_baseline(inputs, ids, task)
    blind_preds = M.vehicle_blind_baseline(inputs, task, CAR)

    def score(preds):
        return M.score_predictions(inputs, preds, inputs, ids, 0, task, optimum)

    return {
        "optimum": optimum,
        "monotone_cost": monotone_cost,
        "detour": M.needs_detour(optimum, monotone_cost),
        "monotone": score(monotone_preds),
        "blind": score(blind_preds),
    }


def test_baselines_on_a_map_whose_optimum_is_monotone():
    out = baselines_on(OPEN, [BIKE, CAR])
    assert out["optimum"].tolist() == out["monotone_cost"].tolist() == [16, 16]
    assert not out["detour"].any()
    assert out["monotone"].route_optimal.all() and out["blind"].route_optimal.all()


def test_baselines_on_a_map_that_needs_a_detour():
    out = baselines_on(DETOUR_MAP, [BIKE, CAR])
    assert out["optimum"].tolist() == [20, 20] and np.isnan(out["monotone_cost"]).all()
    assert out["detour"].all()
    assert not out["monotone"].route_valid.any()  # no monotone route: the input comes back unchanged
    assert out["blind"].route_optimal.all()  # no highway here: the car's route suits the bike too


def test_vehicle_blind_baseline_fails_the_vehicle_that_differs():
    out = baselines_on(SHORTCUT_MAP, [BIKE, CAR])
    assert out["optimum"].tolist() == [12, 2]
    assert out["detour"].tolist() == [True, False]  # the bike must go round, the car goes straight
    assert out["monotone"].route_optimal.tolist() == [False, True]
    assert out["blind"].route_valid.tolist() == [False, True]  # the car's highway is barred to the bike
    assert out["blind"].route_optimal.tolist() == [False, True]


@pytest.fixture(scope="module")
def routing_root(tmp_path_factory):
    return write_routing_dataset(tmp_path_factory.mktemp("routing"), train_bases=4, test_bases=5, size=6)


def test_segment_accounting_matches_the_script(routing_root):
    data = load_split(routing_root, "test")
    max_steps = 5
    head = ScriptedHead(max_steps)
    run = runner.run_segments(
        head, data, batch_size=6, halt_max_steps=max_steps, keep=[1, 2, 4, 8], device="cpu"
    )
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
    # the split by "needs a detour": the same masks as computed by hand from the DP and the optimum
    _, monotone_cost = M.monotone_baseline(data.inputs, data.identifiers, task)
    optimum = M.optimal_costs(data.inputs, data.identifiers, task)
    detour = ~(monotone_cost == optimum)
    assert 0 < detour.sum() < len(data)  # both parts present in this data
    assert result["detour"]["count"] == detour.sum() and result["monotone"]["count"] == (~detour).sum()
    assert result["detour"]["steps"] == pytest.approx(expected_steps[detour].mean())
    assert result["monotone_path"]["route_optimal_rate"] == pytest.approx(np.mean(~detour))
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


# ---- a real (tiny, random) HRM ----


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices: on a shared 2-core machine torch's thread pool spins 50x slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The tiny profile's HRM; halt_max_steps 4: the tests evaluate segments 1, 2 and 4, rows halting at different ones.
TINY_ARCH = tiny_arch(halt_max_steps=4)


def tiny_head(metadata, batch_size: int, seed: int = 0, **overrides):
    """Random weights; the Q-head (zero-initialised in HRM) randomised too, so rows halt at different steps."""
    import torch

    from hrm.models import build_model

    head = build_model(
        {**TINY_ARCH, **overrides},
        seq_len=metadata.seq_len,
        vocab_size=metadata.vocab_size,
        num_puzzle_identifiers=metadata.num_puzzle_identifiers,
        batch_size=batch_size,
        seed=seed,
    )
    state = head.state_dict()
    generator = torch.Generator().manual_seed(seed + 1)
    q_weight = state["model.inner.q_head.weight"]
    q_weight.copy_(torch.randn(q_weight.shape, generator=generator) * 0.5)
    state["model.inner.q_head.bias"].zero_()
    return head


def test_real_model_segments_match_a_manual_loop_and_the_heads_own_metrics(routing_root):
    import torch

    data = load_split(routing_root, "test")
    batch_size, max_steps = 8, 4
    head = tiny_head(data.metadata, batch_size)
    from hrm.training.data import eval_batches

    # Centre the Q-head on the first segment's median margin, so about half the rows halt at once.
    with torch.no_grad():
        first = next(iter(eval_batches(data.dataset, batch_size)))
        _, _, _, out, _ = head.eval()(
            carry=head.initial_carry(first), batch=first, return_keys=PREDICTION_KEYS
        )
        margin = (out["q_halt_logits"] - out["q_continue_logits"]).median()
        head.state_dict()["model.inner.q_head.bias"][0] -= margin
    run = runner.run_segments(head, data, batch_size, max_steps, keep=[1, 2], device="cpu")
    task = load_route_task(routing_root, data.metadata)
    result = runner.evaluate_split(data, run, paper_cost_model().identifiers(), task).metrics

    sums: dict[str, float] = {}
    first_halt, preds_by_step = [], {k: [] for k in (1, 2, max_steps)}
    head.eval()
    with torch.no_grad():
        for batch in eval_batches(data.dataset, batch_size):
            real = int((batch["puzzle_identifiers"] != 0).sum())
            carry = head.initial_carry(batch)
            halt = torch.full((real,), max_steps)
            for step in range(1, max_steps + 1):
                carry, _, step_metrics, outputs, _ = head(
                    carry=carry, batch=batch, return_keys=PREDICTION_KEYS
                )
                wants = (outputs["q_halt_logits"] > outputs["q_continue_logits"])[:real] & (halt == max_steps)
                halt[wants & (step < max_steps)] = step
                if step in preds_by_step:
                    preds_by_step[step].append(outputs["preds"][:real].numpy())
            first_halt.append(halt.numpy())
            for key, value in step_metrics.items():  # the last segment's sums: every real row halted there
                sums[key] = sums.get(key, 0.0) + float(value)
    for k, chunks in preds_by_step.items():
        assert np.array_equal(run.preds_at[k], np.concatenate(chunks))
    assert np.array_equal(run.halt_steps, np.concatenate(first_halt))
    assert 1 < len(np.unique(run.halt_steps))  # the randomised Q-head halts rows at different steps
    assert sums["count"] == len(data)
    assert result["exact_accuracy"] == pytest.approx(sums["exact_accuracy"] / sums["count"])
    assert result["accuracy"] == pytest.approx(sums["accuracy"] / sums["count"], rel=1e-5)
    assert result["q_halt_accuracy"] == pytest.approx(sums["q_halt_accuracy"] / sums["count"])


# ---- the stage end to end ----


def write_stage_inputs(
    tmp_path, data_root, with_curves: bool = True, train_examples: int = 0, **arch_overrides
):
    """params.yaml with every path inside tmp_path, a random-weight checkpoint, optionally dvclive TSVs."""
    import torch
    import yaml

    from hrm.evaluation.data import load_split as read

    params = yaml.safe_load(open(REPO / "params.yaml", encoding="utf-8"))
    params["paths"] = {
        **params["paths"],
        "hrm": str(data_root),
        "model": str(tmp_path / "models" / "hrm.pt"),
        "train_log": str(tmp_path / "reports" / "train"),
        "eval_reports": str(tmp_path / "reports" / "eval"),
    }
    params["arch"] = {**TINY_ARCH, **arch_overrides}
    params["evaluate"] = {
        "batch_size": 8,
        "segments": [1, 2, 4, 8, 16],
        "route_map_examples": 3,
        "train_examples": train_examples,
    }
    params["train"]["device"] = "cpu"
    (tmp_path / "models").mkdir()
    metadata = read(data_root, "train").metadata
    if params["arch"]["name"] == "hrm_v1":
        head = tiny_head(metadata, batch_size=8, **arch_overrides)
    else:
        from hrm.models import build_model

        head = build_model(
            params["arch"],
            seq_len=metadata.seq_len,
            vocab_size=metadata.vocab_size,
            num_puzzle_identifiers=metadata.num_puzzle_identifiers,
            batch_size=8,
            seed=0,
        )
    torch.save(head.state_dict(), tmp_path / "models" / "hrm.pt")
    if with_curves:
        for group, values in (("train", [0.5, 0.7, 0.8]), ("eval", [0.6, 0.75])):
            folder = tmp_path / "reports" / "train" / "plots" / "metrics" / group
            folder.mkdir(parents=True)
            rows = "".join(f"{i}\t{(i + 1) * 10}\t{v}\n" for i, v in enumerate(values))
            (folder / "accuracy.tsv").write_text(f"timestamp\tstep\taccuracy\n{rows}")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def run_stage(params_path, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", str(params_path), "--quiet"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_stage_writes_metrics_plots_figures_and_an_offline_report(routing_root, tmp_path):
    params_path = write_stage_inputs(tmp_path, routing_root, train_examples=12)  # 3 of the 4 train bases
    done = run_stage(params_path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "route optimal" in done.stdout
    out = tmp_path / "reports" / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    for split, count in (("train", 12), ("test", 20)):
        values = metrics[split]
        assert values["count"] == count
        for key in (
            "exact_accuracy",
            "accuracy",
            "q_halt_accuracy",
            "steps",
            "route_valid_rate",
            "route_optimal_rate",
        ):
            assert isinstance(values[key], float), key
        assert set(values["segments"]) == {"1", "2", "4"}  # 8 and 16 capped at halt_max_steps 4
        assert {"bike", "car", "van", "truck"} <= set(values)
        assert values["bike"]["count"] == count // 4
        assert values["labels"] == {"route_valid_rate": 1.0, "route_optimal_rate": 1.0}
        assert (
            0.0 <= values["copy_input"]["accuracy"] < 1.0 and values["copy_input"]["route_valid_rate"] == 0.0
        )
        assert values["detour"]["count"] + values["monotone"]["count"] == count
        assert isinstance(values["detour"]["route_optimal_rate"], float | None)
        assert values["monotone_path"]["route_optimal_rate"] == values["monotone"]["count"] / count
        assert values["vehicle_blind"]["route_optimal_rate"] >= 0.25  # right at least for the car itself
    page = (out / "index.html").read_text()
    assert "best monotone path (baseline)" in page and "model, needs a detour" in page
    segments = json.loads((out / "plots" / "segments.json").read_text())
    assert [row["segments"] for row in segments] == [1, 2, 4]
    assert {"test_exact_accuracy", "test_route_optimal_rate", "train_exact_accuracy"} <= set(segments[0])
    vehicles = json.loads((out / "plots" / "vehicles.json").read_text())
    assert [row["vehicle"] for row in vehicles] == ["bike", "car", "van", "truck"]
    steps = json.loads((out / "plots" / "act_steps.json").read_text())
    assert [row["steps"] for row in steps] == [1, 2, 3, 4]
    assert sum(row["test"] for row in steps) == 20 and sum(row["train"] for row in steps) == 12
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert {"segments.png", "act_steps.png", "vehicles_test.png", "training_curves.png"} <= set(figures)
    assert [f for f in figures if f.startswith("route_map_")] == [
        "route_map_00.png",
        "route_map_01.png",
        "route_map_02.png",
    ]
    for name in figures:
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert "copy the input (baseline)" in page and "invalid:" in page  # a random model's routes fail


def test_stage_is_deterministic_and_refuses_a_missing_checkpoint_cleanly(routing_root, tmp_path):
    from hrm.config import load_params

    params_path = write_stage_inputs(tmp_path, routing_root, with_curves=False)
    params = load_params(params_path)
    params["evaluate"]["route_map_examples"] = 1  # figures cost most of the time; one shows determinism
    out = tmp_path / "reports" / "eval"
    runner.run_evaluation(params, progress=False)
    first = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    runner.run_evaluation(params, progress=False)
    second = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first == second
    assert "training_curves.png" not in first and "No dvclive logs found" in first["index.html"].decode()

    (tmp_path / "models" / "hrm.pt").unlink()
    done = run_stage(params_path, tmp_path)
    assert done.returncode == 1
    assert "hrm.pt: checkpoint not found" in done.stderr and "Traceback" not in done.stderr
    assert (out / "metrics.json").read_bytes() == first["metrics.json"]  # the old report is untouched


def test_checkpoint_of_another_shape_is_a_user_error(routing_root, tmp_path):
    from hrm.config import load_params

    params_path = write_stage_inputs(tmp_path, routing_root, with_curves=False)
    params = load_params(params_path)
    params["arch"]["hidden_size"] = 64
    params["arch"]["puzzle_emb_ndim"] = 64
    with pytest.raises(UserError, match="shape mismatch"):
        runner.run_evaluation(params, progress=False)


def test_data_without_a_cost_model_skips_route_metrics(tmp_path):
    from hrm.config import load_params
    from tests.hrm_layout import write_dataset

    data_root = write_dataset(tmp_path / "data")  # vocab 6, seq_len 8, no routing.json
    params = load_params(write_stage_inputs(tmp_path, data_root, with_curves=False))
    metrics = runner.run_evaluation(params, progress=False)
    assert "route_optimal_rate" not in metrics["test"] and "labels" not in metrics["test"]
    assert "route_optimal_rate" not in metrics["test"]["segments"]["1"]
    assert metrics["test"]["count"] == 10 and isinstance(metrics["test"]["exact_accuracy"], float)
    page = (tmp_path / "reports" / "eval" / "index.html").read_text()
    assert "route metrics skipped" in page and "route_map_" not in page


def test_a_compiled_models_checkpoint_loads_too(routing_root, tmp_path):
    """torch.compile prefixes every key with `_orig_mod.`; official HRM checkpoints come that way."""
    import torch

    data = load_split(routing_root, "train")
    head = tiny_head(data.metadata, batch_size=8)
    state = {f"_orig_mod.{key}": value for key, value in head.state_dict().items()}
    torch.save(state, tmp_path / "compiled.pt")
    loaded = runner.load_head(TINY_ARCH, data.metadata, tmp_path / "compiled.pt", batch_size=8, device="cpu")
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt: not a weights-only torch checkpoint"):
        runner.load_head(TINY_ARCH, data.metadata, tmp_path / "junk.pt", batch_size=8, device="cpu")


def test_identifier_names_become_safe_metric_keys():
    assert runner.metric_key("bike", 1) == "bike"
    assert runner.metric_key("<blank>", 0) == "blank"
    assert runner.metric_key("cargo.bike v2", 5) == "cargo_bike_v2"
    assert runner.metric_key("segments", 2) == "id_segments"  # would overwrite the per-segment block
    assert runner.metric_key("...", 3) == "id3"


def test_stage_evaluates_the_transformer_baseline_in_one_segment(routing_root, tmp_path):
    """`-S arch.name=transformer` must be one flag away: its single prediction is the final one."""
    params_path = write_stage_inputs(tmp_path, routing_root, with_curves=False, name="transformer")
    done = run_stage(params_path, tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "reports" / "eval" / "metrics.json").read_text())
    assert set(metrics["test"]["segments"]) == {"1"}
    assert metrics["test"]["steps"] == 1.0
    assert 0.0 <= metrics["test"]["route_optimal_rate"] <= 1.0
