"""The generator on a small configuration: structure, label correctness, determinism, pinned bytes."""

import copy
import json

import networkx as nx
import numpy as np
import pytest

from hrm.data import generate, routing, spec
from hrm.io import UserError

SMALL_CITY = {
    "avenue_spacing": [4, 6],
    "block_size": [1, 2],
    "highway_probability": 0.6,
    "street_gap_probability": 0.15,
    "alley_probability": 0.5,
    "park_probability": 0.1,
    "river_probability": 0.4,
    "street_bridge_probability": 0.3,
    "closures": [0, 2],
    "hotspots": [1, 3],
    "hotspot_radius": [2, 5],
    "traffic_by_hour": [
        10,
        5,
        5,
        5,
        10,
        25,
        55,
        90,
        100,
        75,
        55,
        55,
        60,
        55,
        55,
        60,
        75,
        95,
        100,
        80,
        55,
        40,
        30,
        20,
    ],
    "class_traffic": {"alley": 20, "street": 45, "avenue": 75, "highway": 100},
    "congestion_thresholds": [25, 55, 90],
    "congestion_jitter": 30,
}
SMALL_VEHICLES = [
    {
        "name": "bike",
        "original_id": "easy",
        "class_cost": {"alley": 9, "street": 10, "avenue": 12, "highway": None},
        "congestion_cost": [0, 2, 5, 7],
    },
    {
        "name": "car",
        "original_id": "normal",
        "class_cost": {"alley": 17, "street": 10, "avenue": 7, "highway": 4},
        "congestion_cost": [0, 5, 13, 29],
    },
    {
        "name": "van",
        "original_id": "hard",
        "class_cost": {"alley": None, "street": 9, "avenue": 8, "highway": 5},
        "congestion_cost": [0, 7, 17, 37],
    },
    {
        "name": "truck",
        "original_id": "expert",
        "class_cost": {"alley": None, "street": None, "avenue": 9, "highway": 6},
        "congestion_cost": [0, 9, 23, 47],
    },
]
SMALL_PARAMS = {
    "generate": {
        "seed": 20251125,
        "rows": 12,
        "cols": 12,
        "train_bases": 3,
        "test_bases": 2,
        "min_route_length": 12,
        "max_attempts": 50,
        "count_cap": 2,
        "city": SMALL_CITY,
        "vehicles": SMALL_VEHICLES,
    }
}


def small_params(**overrides) -> dict:
    params = copy.deepcopy(SMALL_PARAMS)
    params["generate"].update(overrides)
    return params


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "raw"
    summary = generate.generate(small_params(), out, progress=False)
    return out, summary


def load(folder, name):
    return json.loads((folder / name).read_text())


def test_writes_the_eighteen_files_with_consistent_structure(small_set):
    folder, summary = small_set
    assert sorted(p.name for p in folder.iterdir()) == sorted(spec.raw_file_names())
    assert load(folder, spec.RAW_IDENTIFIERS_FILE) == ["<blank>", "bike", "car", "van", "truck"]
    for split, bases in (("train", 3), ("test", 2)):
        files = spec.raw_split_files(split)
        meta = load(folder, files["dataset"])
        assert meta["seq_len"] == 144 and meta["rows"] == meta["cols"] == 12
        assert meta["vocab_size"] == spec.VOCAB_SIZE and meta["total_groups"] == bases
        assert meta["num_puzzle_identifiers"] == 5 and meta["ignore_label_id"] == 0
        inputs, labels = load(folder, files["inputs"]), load(folder, files["labels"])
        assert len(inputs) == len(labels) == 4 * bases
        assert all(len(row) == 144 for row in inputs + labels)
        assert load(folder, files["puzzle_identifiers"]) == [1, 2, 3, 4] * bases
        assert load(folder, files["puzzle_indices"]) == list(range(4 * bases + 1))
        assert load(folder, files["group_indices"]) == list(range(0, 4 * bases + 1, 4))
        ids = load(folder, files["base_scenario_ids"])
        assert ids == [f"{split}-{b:04d}" for b in range(bases) for _ in range(4)]
        assert load(folder, files["vehicle_types"]) == ["bike", "car", "van", "truck"] * bases
        for group in range(bases):
            rows = inputs[4 * group : 4 * group + 4]
            assert all(row == rows[0] for row in rows)  # one map per base
        assert all(0 not in row for row in labels)  # every cell is a real target
    assert summary["counts"]["train"]["examples"] == 12 and summary["counts"]["test"]["examples"] == 8


def _networkx_optimum(grid: np.ndarray, cost_row: np.ndarray, rows: int, cols: int):
    """Independent solver: networkx Dijkstra over the same rule, all shortest paths enumerated."""
    start, goal = int(np.flatnonzero(grid == spec.START)[0]), int(np.flatnonzero(grid == spec.GOAL)[0])
    costs = cost_row[grid]
    graph = nx.DiGraph()
    for u, adjacent in enumerate(routing.neighbours(rows, cols)):
        for v in adjacent:
            if costs[u] >= 0 and costs[v] >= 0:
                graph.add_edge(u, v, weight=int(costs[v]))
    paths = list(nx.all_shortest_paths(graph, start, goal, weight="weight"))
    return nx.dijkstra_path_length(graph, start, goal), paths


def test_every_label_is_the_unique_optimum(small_set):
    folder, summary = small_set
    table = np.array(summary["cost_model"]["cost_table"])
    for split in spec.SPLITS:
        files = spec.raw_split_files(split)
        inputs, labels = load(folder, files["inputs"]), load(folder, files["labels"])
        vehicles = load(folder, files["puzzle_identifiers"])
        records = summary["examples"][split]
        for index, (grid, label, vehicle) in enumerate(zip(inputs, labels, vehicles, strict=True)):
            check = routing.check_route(np.array(grid), np.array(label), table[vehicle], 12, 12)
            assert check.valid, (split, index, check.reason)
            best, paths = _networkx_optimum(np.array(grid), table[vehicle], 12, 12)
            assert len(paths) == 1 and tuple(paths[0]) == check.path
            assert check.cost == best == records[index]["route_cost"]
            assert check.length == records[index]["route_length"] >= 12


def test_train_and_test_streams_are_disjoint(small_set):
    _, summary = small_set
    keys = {split: {tuple(b["spawn_key"][:2]) for b in summary["bases"][split]} for split in spec.SPLITS}
    assert {k[0] for k in keys["train"]} == {0} and {k[0] for k in keys["test"]} == {1}


def test_same_params_give_identical_bytes(tmp_path, small_set):
    folder, summary = small_set
    again = generate.generate(small_params(), tmp_path / "raw", progress=False)
    assert again["sha256"] == summary["sha256"]
    for name in spec.raw_file_names():
        assert (tmp_path / "raw" / name).read_bytes() == (folder / name).read_bytes()


def test_exhausted_attempts_are_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"base train-0000 found no acceptable scenario in 2 attempts"):
        generate.generate(small_params(min_route_length=40, max_attempts=2), tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def test_bad_settings_name_the_key(tmp_path, params_file):
    raw = str(tmp_path / "raw")
    with pytest.raises(UserError, match=r"generate\.rows must be an integer >= 4, got text 'many'"):
        generate.run(params_file({"paths": {"raw": raw}, "generate": {"rows": "many"}}), progress=False)
    with pytest.raises(UserError, match=r"generate\.city\.traffic_by_hour must be a list of exactly 24"):
        generate.run(params_file({"paths": {"raw": raw}, "generate": {"city": {"traffic_by_hour": [1, 2]}}}))
    assert not (tmp_path / "raw").exists()


def test_pinned_sha256_of_the_small_configuration(small_set):
    """Any change to these bytes changes the dataset: bump GENERATOR_VERSION and re-pin on purpose."""
    _, summary = small_set
    assert summary["generator"]["version"] == generate.GENERATOR_VERSION == "1.0.0"
    changed = sorted(name for name, digest in PINNED_SHA256.items() if summary["sha256"][name] != digest)
    assert not changed, f"files changed: {changed}"
    assert set(summary["sha256"]) == set(PINNED_SHA256)


PINNED_SHA256 = {
    "city_routing_paper_dataset_summary.json": "0b7e9b647f3e0218b8e4654f40d9054f6c0da511ea2d428d70fde4067e741582",
    "city_routing_paper_identifiers.json": "578c07c32c9ee54166e63f181d788c5e7b7409336f17526f5fbb269d657702b7",
    "city_routing_paper_test_all__base_scenario_ids.json": "cc6d35ec0d896cb35a191aca1bbf2263bd97e9549a9fc252728621f96c95d652",
    "city_routing_paper_test_all__group_indices.json": "36933b2d39ae6b0ce3e39a304e5db0ba856bafa51e1097d6655c712b3be5dd80",
    "city_routing_paper_test_all__inputs.json": "d13bbbc2785c8f5d0fba785cd19245a6759d9de9e08ea1e10e6d08d066f1e2c0",
    "city_routing_paper_test_all__labels.json": "92fd3c3cd984fd5c59e74d15cd63e571238aa05fc53b7e58083272adf8336564",
    "city_routing_paper_test_all__puzzle_identifiers.json": "fddcb484ef5e2ce7a0f37c4a5bfd4fa89c9f105cff36f2d28a554a52979aa376",
    "city_routing_paper_test_all__puzzle_indices.json": "2c9002633a7c46a11646fcc94e592dd33c0ad63f8cc9f7340e2f1ea89b27e14b",
    "city_routing_paper_test_all__vehicle_types.json": "d1851726a8c98dde23f187079452688229b741dcf2160e385ce3f160199bfe30",
    "city_routing_paper_test_dataset.json": "4c2dbc244f13229f222abff612e2ac105f396e7517db60b9d590fdc99e163d71",
    "city_routing_paper_train_all__base_scenario_ids.json": "c55d32fe6765d2dc869aa92588bba27ae24eacd16aa31186d23b97d542895b44",
    "city_routing_paper_train_all__group_indices.json": "32936f39ebbdd6562b717a0635d57dee3af871c48cac9ce6d6d214e9a64787e5",
    "city_routing_paper_train_all__inputs.json": "fca07441abab982b74f4f41fdc2fb7485e3940cb20e59e7293dfa9f273a10998",
    "city_routing_paper_train_all__labels.json": "422faec029856ded50c201532421dbd44ed81c194eae4ee2d2a610290033bf39",
    "city_routing_paper_train_all__puzzle_identifiers.json": "d1670d807ce59af7a4942dd7567c944ad3defa03c250500b218b81d2af800082",
    "city_routing_paper_train_all__puzzle_indices.json": "a6b4bcd961bdc398ceba135dd2c376168e53f84171019143fcb37734086f4f7c",
    "city_routing_paper_train_all__vehicle_types.json": "a308a823a2e3377bee8bb1c50a43367bbc66691e450560b977663f7e8570451a",
    "city_routing_paper_train_dataset.json": "c8f2011878e3d6a64126076a23263ee608cc982d85194d6ff35eb9a1f0e4a24f",
}
