"""A tiny city-routing dataset in HRM's layout, built inside tests (no generate/convert run needed).

Grids are random roads with some buildings and closures; labels are the A* routes of `hrm.data.routing`, one
puzzle per vehicle, one group per base map, as the real data. `routing.json` carries the cost model, so the
evaluation computes route metrics on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from hrm.data import routing, spec
from hrm.data.conversion.convert import hrm_metadata, write_hrm_split
from tests.conftest import REPO


def paper_cost_model() -> spec.CostModel:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return spec.CostModel(tuple(spec.parse_vehicles(params["generate"]["vehicles"])))


def random_base(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Roads of every class and congestion, ~15% buildings, a few closures, start and goal far apart."""
    grid = rng.integers(spec.ROAD_BASE, spec.CLOSED, size=rows * cols)
    grid[rng.random(rows * cols) < 0.15] = spec.BUILDING
    grid[rng.random(rows * cols) < 0.03] = spec.CLOSED
    grid[0] = spec.START
    grid[rows * cols - 1] = spec.GOAL
    return grid


def write_routing_split(
    root: Path, split: str, bases: int, rows: int, cols: int, seed: int, model: spec.CostModel
) -> None:
    rng = np.random.default_rng(seed)
    table = model.cost_table()
    n_vehicles = len(model.vehicles)
    inputs, labels, identifiers, base_ids = [], [], [], []
    while len(inputs) < bases * n_vehicles:
        grid = random_base(rng, rows, cols)
        routes = []
        for vehicle in range(1, n_vehicles + 1):
            costs = routing.cell_costs(grid, table[vehicle])
            solution = routing.solve(costs, 0, rows * cols - 1, rows, cols)
            if solution.cost is None:
                break
            label = grid.copy()
            label[list(solution.path[1:-1])] = spec.ROUTE
            routes.append(label)
        if len(routes) < n_vehicles:
            continue  # some vehicle cannot reach the goal: draw another map, as the generator does
        for vehicle, label in enumerate(routes, start=1):
            inputs.append(grid)
            labels.append(label)
            identifiers.append(vehicle)
            base_ids.append(len(inputs) // n_vehicles)
    count = len(inputs)
    arrays = {
        "inputs": np.array(inputs),
        "labels": np.array(labels),
        "puzzle_identifiers": np.array(identifiers),
        "puzzle_indices": np.arange(count + 1),
        "group_indices": np.arange(0, count + 1, n_vehicles),
        "base_scenario_ids": np.array(base_ids),
        "vehicle_types": np.array(identifiers),
    }
    metadata = hrm_metadata(arrays, spec.VOCAB_SIZE, n_vehicles + 1) | {"rows": rows, "cols": cols}
    write_hrm_split(root / split, arrays, metadata)


def write_routing_dataset(root: Path, train_bases: int = 6, test_bases: int = 5, size: int = 6) -> Path:
    model = paper_cost_model()
    root = Path(root)
    write_routing_split(root, "train", train_bases, size, size, seed=11, model=model)
    write_routing_split(root, "test", test_bases, size, size, seed=12, model=model)
    (root / "identifiers.json").write_text(json.dumps(model.identifiers()), encoding="utf-8")
    routing_json = dict(model.to_dict(), rows=size, cols=size)
    (root / spec.HRM_ROUTING_FILE).write_text(json.dumps(routing_json), encoding="utf-8")
    return root
