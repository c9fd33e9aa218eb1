"""The generator on a small configuration: structure, label correctness, determinism, pinned bytes."""

import copy
import json

import networkx as nx
import numpy as np
import pytest
import yaml

from hrm.data import routing, spec
from hrm.data.generation import generate
from hrm.io import UserError
from tests.conftest import repo_params

SMALL_CITY = {
    "avenue_spacing": [4, 6],
    "block_size": [1, 2],
    "highway_probability": 0.6,
    "street_gap_probability": 0.15,
    "alley_probability": 0.5,
    "park_probability": 0.1,
    "river_probability": 0.4,
    "street_bridge_probability": 0.3,
    "avenue_bridge_probability": 0.6,
    "closures": [0, 2],
    "barrier_probability": 0.6,
    "barrier_margin": [0, 3],
    "corridor_hotspot_probability": 0.5,
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
        "max_attempts": 300,
        "count_cap": 2,
        "difficulty": {
            "min_detour": 2,
            "min_detour_share": 0.3,
            "min_distinct_routes": 3,
            "min_distinct_share": 0.3,
        },
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


def _set(section: str, **values):
    """A change to the repository's params: `generate.<section>` (or `generate` itself) updated."""

    def change(params):
        target = params["generate"] if section == "generate" else params["generate"][section]
        target.update(values)

    return change


def _drop(section: str, key: str):
    def change(params):
        (params["generate"] if section == "generate" else params["generate"][section]).pop(key)

    return change


def _more_distinct_routes_than_vehicles(params):
    params["generate"]["difficulty"]["min_distinct_routes"] = len(params["generate"]["vehicles"]) + 1


# The user's path: a params file read by the stage entry point. Types, ranges, list lengths, missing and
# unknown keys are the schema's (schemas/params.schema.json); the rules between values are the generator's.
BAD_SETTINGS = [
    (_set("generate", rows="many"), "generate.rows must be an integer in [4, 64], got text 'many'"),
    (
        _set("city", traffic_by_hour=[1, 2]),
        "generate.city.traffic_by_hour must be a list of exactly 24 items, got [1, 2]",
    ),
    (
        _set("city", traffic_by_hour=[10] * 23 + [-1]),
        "generate.city.traffic_by_hour[23] must be an integer >= 0, got -1",
    ),
    (
        _set("city", highway_probability=1.5),
        "generate.city.highway_probability must be a number in [0, 1], got 1.5",
    ),
    (
        _set("city", avenue_spacing=[2, 5]),
        "generate.city.avenue_spacing[0] must be an integer in [3, 64], got 2",
    ),
    (
        _set("city", hotspot_radius=[0, 4]),
        "generate.city.hotspot_radius[0] must be an integer in [1, 64], got 0",
    ),
    (_set("city", block_size=[1]), "generate.city.block_size must be a list of exactly 2 items, got [1]"),
    (_set("city", congestion_jitter=-1), "generate.city.congestion_jitter must be an integer >= 0, got -1"),
    (
        _set("city", congestion_thresholds=[25, 55]),
        "generate.city.congestion_thresholds must be a list of exactly 3 items, got [25, 55]",
    ),
    (
        lambda p: p["generate"]["city"]["class_traffic"].pop("highway"),
        "generate.city.class_traffic.highway: missing (required in a full params file)",
    ),
    (
        _drop("city", "barrier_margin"),
        "generate.city.barrier_margin: missing (required in a full params file)",
    ),
    # rules between values, checked by CityParams.from_dict
    (
        _set("city", avenue_spacing=[6, 4]),
        "generate.city.avenue_spacing must be [min, max] with min <= max, got [6, 4]",
    ),
    (_set("city", closures=[3, 1]), "generate.city.closures must be [min, max] with min <= max, got [3, 1]"),
    (
        _set("city", congestion_thresholds=[55, 25, 90]),
        "generate.city.congestion_thresholds must be in increasing order",
    ),
    (
        _set("difficulty", min_detour_share=1.5),
        "generate.difficulty.min_detour_share must be a number in [0, 1], got 1.5",
    ),
    (
        _set("difficulty", min_distinct_share=-0.1),
        "generate.difficulty.min_distinct_share must be a number in [0, 1], got -0.1",
    ),
    (
        _set("difficulty", min_detour="far"),
        "generate.difficulty.min_detour must be an integer in [2, 4096], got text 'far'",
    ),
    (
        _set("difficulty", min_detour=0),
        "generate.difficulty.min_detour must be an integer in [2, 4096], got 0",
    ),
    (
        _set("difficulty", min_distinct_routes=0),
        "generate.difficulty.min_distinct_routes must be an integer in [1, 64], got 0",
    ),
    (_set("difficulty", extra=1), "generate.difficulty.extra: unknown key"),
    (_set("generate", difficulty=None), "generate.difficulty must be a mapping, got null None"),
    (_drop("generate", "difficulty"), "generate.difficulty: missing (required in a full params file)"),
    (
        _drop("difficulty", "min_detour"),
        "generate.difficulty.min_detour: missing (required in a full params file)",
    ),
    # rules between values, checked by DifficultyParams.from_dict
    (_set("difficulty", min_detour=3), "generate.difficulty.min_detour must be even"),
    (
        lambda p: p["generate"].update(
            rows=12,
            cols=12,
            min_route_length=12,
            difficulty={**p["generate"]["difficulty"], "min_detour": 200, "min_detour_share": 0.5},
        ),
        "generate.difficulty.min_detour = 200 is longer than a 12x12 map allows",
    ),
    (_more_distinct_routes_than_vehicles, "generate.difficulty.min_distinct_routes must be at most the"),
]


@pytest.mark.parametrize(("change", "message"), BAD_SETTINGS)
def test_bad_settings_name_file_and_key_before_generating(tmp_path, monkeypatch, change, message):
    monkeypatch.setattr(generate, "generate_bases", lambda *a, **k: pytest.fail("generation started"))
    params = repo_params()
    params["paths"]["raw"] = str(tmp_path / "raw")
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    with pytest.raises(UserError) as caught:
        generate.run(path, progress=False)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)
    assert not (tmp_path / "raw").exists()


def _detours_and_distinct(folder, summary, split):
    """Measured from the files themselves (labels), not from the summary's figures."""
    files = spec.raw_split_files(split)
    inputs, labels = load(folder, files["inputs"]), load(folder, files["labels"])
    table = np.array(summary["cost_model"]["cost_table"])
    vehicles = load(folder, files["puzzle_identifiers"])
    detours, routes = [], []
    for grid, label, vehicle in zip(inputs, labels, vehicles, strict=True):
        check = routing.check_route(np.array(grid), np.array(label), table[vehicle], 12, 12)
        start, goal = check.path[0], check.path[-1]
        manhattan = abs(start // 12 - goal // 12) + abs(start % 12 - goal % 12)
        detours.append(len(check.path) - 1 - manhattan)
        routes.append(check.path)
    distinct = [len(set(routes[i : i + 4])) for i in range(0, len(routes), 4)]
    return detours, distinct


@pytest.mark.parametrize(
    "difficulty",
    [
        {"min_detour": 2, "min_detour_share": 0.75, "min_distinct_routes": 1, "min_distinct_share": 0.0},
        {"min_detour": 6, "min_detour_share": 0.5, "min_distinct_routes": 1, "min_distinct_share": 0.0},
        {"min_detour": 2, "min_detour_share": 0.0, "min_distinct_routes": 3, "min_distinct_share": 0.8},
    ],
    ids=["detour_share", "detour_length", "distinct_routes"],
)
def test_each_difficulty_rule_is_met_and_measured(tmp_path, difficulty):
    params = small_params(train_bases=6, test_bases=4, max_attempts=400, difficulty=difficulty)
    summary = generate.generate(params, tmp_path / "raw", progress=False)
    for split in spec.SPLITS:
        detours, distinct = _detours_and_distinct(tmp_path / "raw", summary, split)
        assert sum(d >= difficulty["min_detour"] for d in detours) >= difficulty["min_detour_share"] * len(
            detours
        )
        assert sum(d >= difficulty["min_distinct_routes"] for d in distinct) >= (
            difficulty["min_distinct_share"] * len(distinct)
        )
        stats = summary["difficulty"][split]
        assert stats["detour_histogram"] == {str(k): detours.count(k) for k in sorted(set(detours))}
        assert stats["monotone_share"] == round(detours.count(0) / len(detours), 6)
        assert stats["rules"]["min_detour_share"]["met"] and stats["rules"]["min_distinct_share"]["met"]
        assert stats["distinct_routes_per_base_histogram"] == {str(k): distinct.count(k) for k in range(1, 5)}
        bike = [d for i, d in enumerate(detours) if i % 4 == 0]
        assert stats["by_vehicle"]["bike"]["mean_detour"] == round(sum(bike) / len(bike), 4)
        records = summary["examples"][split]
        assert [r["detour"] for r in records] == detours


def test_the_city_alone_makes_detours_and_rules_only_top_up(tmp_path):
    """Without rules, the barrier and corridor hotspot already give detours; with them off, few remain."""
    no_rules = {"min_detour": 2, "min_detour_share": 0.0, "min_distinct_routes": 1, "min_distinct_share": 0.0}
    params = small_params(train_bases=12, test_bases=2, difficulty=no_rules)
    with_city = generate.generate(params, tmp_path / "a", progress=False)["difficulty"]["train"]
    flat_city = dict(SMALL_CITY, barrier_probability=0.0, corridor_hotspot_probability=0.0)
    params = small_params(train_bases=12, test_bases=2, difficulty=no_rules, city=flat_city)
    without = generate.generate(params, tmp_path / "b", progress=False)["difficulty"]["train"]
    assert with_city["monotone_share"] < without["monotone_share"]
    summary = generate.generate(small_params(), tmp_path / "c", progress=False)
    assert summary["rejections"]["by_reason"].keys() >= {"detour", "distinct_routes"}


@pytest.mark.parametrize(
    ("rule", "difficulty"),
    [
        ("min_detour_share", {"min_detour": 40, "min_detour_share": 1.0}),
        ("min_distinct_share", {"min_distinct_routes": 4, "min_distinct_share": 1.0}),
    ],
)
def test_an_unreachable_difficulty_rule_fails_naming_it(tmp_path, rule, difficulty):
    settings = dict(SMALL_PARAMS["generate"]["difficulty"], min_detour_share=0.0, min_distinct_share=0.0)
    settings.update(difficulty)
    with pytest.raises(UserError, match=rf"difficulty rules not met: generate\.difficulty\.{rule}"):
        generate.generate(small_params(max_attempts=3, difficulty=settings), tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def test_quotas_keep_every_prefix_at_the_share():
    rules = generate.DifficultyParams(2, 0.5, 3, 0.9)
    achieved = 0
    for index in range(50):
        need = rules.detour_quota(index, 4, achieved)
        assert 0 <= need <= 4
        achieved += need  # the least a base may give
        assert achieved >= 0.5 * 4 * (index + 1)
    assert rules.detour_quota(10, 4, achieved=100) == 0  # ahead of the share: no requirement
    assert rules.distinct_quota(0, 0) == 3 and rules.distinct_quota(9, 9) == 0


def test_pinned_sha256_of_the_small_configuration(small_set):
    """Any change to these bytes changes the dataset: bump GENERATOR_VERSION and re-pin on purpose."""
    _, summary = small_set
    assert summary["generator"]["version"] == generate.GENERATOR_VERSION == "2.0.0"
    changed = sorted(name for name, digest in PINNED_SHA256.items() if summary["sha256"][name] != digest)
    assert not changed, f"files changed: {changed}"
    assert set(summary["sha256"]) == set(PINNED_SHA256)


PINNED_SHA256 = {
    "city_routing_paper_dataset_summary.json": "dc6682989e043b9c32634e3c574dc75f70380c7788bae8bd0fa46f060970c579",
    "city_routing_paper_identifiers.json": "578c07c32c9ee54166e63f181d788c5e7b7409336f17526f5fbb269d657702b7",
    "city_routing_paper_test_all__base_scenario_ids.json": "cc6d35ec0d896cb35a191aca1bbf2263bd97e9549a9fc252728621f96c95d652",
    "city_routing_paper_test_all__group_indices.json": "36933b2d39ae6b0ce3e39a304e5db0ba856bafa51e1097d6655c712b3be5dd80",
    "city_routing_paper_test_all__inputs.json": "005c21d707e5ae654c042ac18a3094771833c2208b7a12aaac5055012efb2bd6",
    "city_routing_paper_test_all__labels.json": "b2259ce3b6534539e9e7ad3f2455dd1a34f912aa30cf8d3b4cae0586db640717",
    "city_routing_paper_test_all__puzzle_identifiers.json": "fddcb484ef5e2ce7a0f37c4a5bfd4fa89c9f105cff36f2d28a554a52979aa376",
    "city_routing_paper_test_all__puzzle_indices.json": "2c9002633a7c46a11646fcc94e592dd33c0ad63f8cc9f7340e2f1ea89b27e14b",
    "city_routing_paper_test_all__vehicle_types.json": "d1851726a8c98dde23f187079452688229b741dcf2160e385ce3f160199bfe30",
    "city_routing_paper_test_dataset.json": "4c2dbc244f13229f222abff612e2ac105f396e7517db60b9d590fdc99e163d71",
    "city_routing_paper_train_all__base_scenario_ids.json": "c55d32fe6765d2dc869aa92588bba27ae24eacd16aa31186d23b97d542895b44",
    "city_routing_paper_train_all__group_indices.json": "32936f39ebbdd6562b717a0635d57dee3af871c48cac9ce6d6d214e9a64787e5",
    "city_routing_paper_train_all__inputs.json": "7b7f390f4dd1f5b3d50a9ab14c980a84dbd89318c5ff5fbbaf75cb20572c56ea",
    "city_routing_paper_train_all__labels.json": "71790bae955b351b827a41471d6477f534625518786d2f6f6c6d9e3642f7b55f",
    "city_routing_paper_train_all__puzzle_identifiers.json": "d1670d807ce59af7a4942dd7567c944ad3defa03c250500b218b81d2af800082",
    "city_routing_paper_train_all__puzzle_indices.json": "a6b4bcd961bdc398ceba135dd2c376168e53f84171019143fcb37734086f4f7c",
    "city_routing_paper_train_all__vehicle_types.json": "a308a823a2e3377bee8bb1c50a43367bbc66691e450560b977663f7e8570451a",
    "city_routing_paper_train_dataset.json": "c8f2011878e3d6a64126076a23263ee608cc982d85194d6ff35eb9a1f0e4a24f",
}
