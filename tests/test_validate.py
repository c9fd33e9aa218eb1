"""The validate stage on a tiny generated dataset: full score, reports, the independent solver, leakage."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from hrm.config import ConfigError
from hrm.data import routing, spec
from hrm.data.conversion import raw
from hrm.data.conversion.raw import SOURCE_GENERATOR, RawDataset, RawSplit
from hrm.data.facts import example_facts
from hrm.data.validation import compliance, validate
from hrm.io import UserError
from tests.validate_data import copy_set, load_docs, make_valid_set, small_params, write_docs, write_params


@pytest.fixture(scope="module")
def valid_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    make_valid_set(root)
    return root


@pytest.fixture
def dataset_copy(valid_set, tmp_path):
    copy_set(valid_set, tmp_path)
    return tmp_path


def test_valid_small_set_scores_one_and_writes_reports(dataset_copy):
    validation = validate.run(dataset_copy / "params.yaml")
    report = validation.report
    assert report.score == 1.0 and report.passed
    assert [c.name for c in report.checks if not c.passed] == []
    assert {c.name for c in report.checks} >= {
        "train_examples",
        "base_overlap",
        "variants_per_base",
        "encoding",
        "one_start_one_goal",
        "labels_are_input_plus_route",
        "route_valid",
        "route_optimal",
        "route_unique",
        "same_base_map",
        "route_diversity",
        "summary_agrees",
        "hrm_layout_agrees",
    }
    reports = dataset_copy / "reports"
    metrics = json.loads((reports / "compliance.json").read_text())
    assert metrics["score"] == 1.0 and metrics["passed"] is True
    assert set(metrics["categories"]) == set(compliance.CATEGORIES)
    assert metrics["checks"]["route_optimality.route_optimal"] == 1.0
    assert metrics["checks"]["methodology.train_examples"] == 24
    assert metrics["figures"]["train_examples"] == 24 and metrics["figures"]["test_examples"] == 12
    markdown = (reports / "compliance.md").read_text()
    assert "**PASS**" in markdown and "route_unique" in markdown
    assert (reports / "scenarios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in reports.iterdir()) == [
        "compliance.json",
        "compliance.md",
        "scenarios.png",
        "score.json",
    ]


def test_reports_are_deterministic(dataset_copy):
    validate.run(dataset_copy / "params.yaml")
    first = {p.name: p.read_bytes() for p in (dataset_copy / "reports").iterdir()}
    validate.run(dataset_copy / "params.yaml")
    second = {p.name: p.read_bytes() for p in (dataset_copy / "reports").iterdir()}
    assert first == second


def test_every_generated_file_passes_its_schema(valid_set):
    docs = load_docs(valid_set / "raw")
    for name, kind in raw.RAW_FILE_KINDS.items():
        assert list(raw.validator(kind).iter_errors(docs[name])) == [], name
    assert len(set(raw.SCHEMA_FILES.values())) == 9  # one schema per file kind


@pytest.mark.parametrize(
    "document",
    [
        [[1, 2, 3], [4, 5, 6]],
        [[1, 2, 3], [4, 5]],  # ragged rows are a cross-file matter, not the schema's
        [],
        [[]],
        [[1, True]],
        [[1, 2.5]],
        [[1, 2.0]],  # JSON Schema counts 2.0 as an integer: the fast path defers to jsonschema
        [[1, "2"]],
        [[1, None]],
        [[1, -1]],
        [[1, 256]],
        [1, 2],
        {"a": [1]},
        [[[1]]],
    ],
)
def test_fast_grid_check_agrees_with_the_schema(document):
    schema_ok = not list(raw.validator("inputs").iter_errors(document))
    fast_ok = raw.grid_list_conforms(document)
    assert fast_ok <= schema_ok  # the fast path never accepts what the schema rejects
    assert (raw.schema_errors(document, "inputs", "x.json") == []) == schema_ok


def test_schemas_are_valid_draft_2020_12():
    for kind in raw.SCHEMA_FILES:
        Draft202012Validator.check_schema(raw.validator(kind).schema)
        assert raw.validator(kind).schema["$schema"].endswith("2020-12/schema")


# ---- the independent solver ---------------------------------------------------------------------------

S, G, B = spec.START, spec.GOAL, spec.BUILDING
ST, AV = spec.road_token("street", 0), spec.road_token("avenue", 0)
COSTS = np.full(spec.VOCAB_SIZE, spec.BLOCKED, dtype=np.int64)
COSTS[ST], COSTS[AV], COSTS[S], COSTS[G] = 5, 2, 0, 0


def _solve(rows: list[list[int]]):
    grid = np.array(rows).reshape(-1)
    start, goal = int(np.flatnonzero(grid == S)[0]), int(np.flatnonzero(grid == G)[0])
    return routing.dijkstra_optimum(COSTS[grid], start, goal, len(rows), len(rows[0]))


def test_independent_solver_sees_a_tie():
    cost, on_optimal = _solve([[S, ST], [ST, G]])
    assert cost == 5 and on_optimal.tolist() == [True, True, True, True]  # two routes: not unique


def test_independent_solver_unique_route_mask():
    cost, on_optimal = _solve([[S, AV, B], [ST, AV, G]])
    assert cost == 4 and on_optimal.reshape(2, 3).tolist() == [[True, True, False], [False, True, True]]


def test_independent_solver_unreachable_goal():
    cost, on_optimal = _solve([[S, B, G]])
    assert cost is None and not on_optimal.any()


def test_independent_solver_agrees_with_networkx_and_astar():
    generator = np.random.default_rng(7)
    tokens = np.array([B, ST, AV, spec.road_token("street", 3), spec.CLOSED])
    costs = COSTS.copy()
    costs[spec.road_token("street", 3)] = 20
    for _ in range(30):
        rows, cols = 7, 9
        grid = generator.choice(tokens, size=rows * cols, p=[0.25, 0.35, 0.2, 0.1, 0.1])
        start, goal = generator.choice(rows * cols, size=2, replace=False)
        grid[start], grid[goal] = S, G
        cell_cost = costs[grid]
        cost, on_optimal = routing.dijkstra_optimum(cell_cost, int(start), int(goal), rows, cols)
        graph = nx.DiGraph()
        for u in range(rows * cols):
            for v in routing.neighbours(rows, cols)[u]:
                if cell_cost[u] >= 0 and cell_cost[v] >= 0 and v != start and u != goal:
                    graph.add_edge(u, v, weight=int(cell_cost[v]))
        try:
            expected = nx.dijkstra_path_length(graph, int(start), int(goal))
            n_paths = sum(1 for _ in nx.all_shortest_paths(graph, int(start), int(goal), weight="weight"))
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            expected, n_paths = None, 0
        assert cost == expected
        astar = routing.solve(cell_cost, int(start), int(goal), rows, cols, count_cap=100)
        assert astar.cost == cost
        if cost is not None:
            unique = n_paths == 1
            assert unique == (on_optimal.sum() == len(astar.path))


# ---- settings, leakage figures, layout -------------------------------------------------------------------


def test_bad_weights_are_a_config_error(tmp_path):
    params = small_params(tmp_path)
    params["validate"]["weights"]["tokens"] = 0.5
    with pytest.raises(ConfigError, match="validate.weights must sum to 1"):
        validate.ValidateSettings.from_params(params)
    params["validate"]["weights"] = {"methodology": 1.0}
    with pytest.raises(UserError, match=r"validate.weights.tokens: missing"):
        validate.run(write_params(tmp_path, params))
    write_params(tmp_path, {"paths": {}})
    with pytest.raises(UserError, match="validate: missing"):
        validate.run(tmp_path / "params.yaml")


def test_near_duplicate_maps_are_counted_not_fatal(dataset_copy):
    raw = dataset_copy / "raw"
    docs = load_docs(raw)
    train_inputs = docs[spec.raw_split_files("train")["inputs"]]
    test_files = spec.raw_split_files("test")
    test_inputs = docs[test_files["inputs"]]
    # test base 0 becomes train base 0's map with a few building cells turned to park: > 90% equal cells
    near = list(train_inputs[0])
    changed = [i for i, token in enumerate(near) if token == B][:5]
    for i in changed:
        near[i] = spec.PARK
    for k in range(4):
        test_inputs[k] = near
    write_docs(raw, docs)
    settings = validate.ValidateSettings.from_params(small_params(dataset_copy))
    report = validate.validate_dataset(settings).report
    assert report.figures["near_duplicate_map_pairs_across_splits"] >= 1
    assert report.figures["max_map_equal_share_across_splits"] >= 1 - 5 / len(near)
    identical = next(c for c in report.checks if c.name == "identical_grids_across_splits")
    assert identical.passed  # near, not identical


def test_same_streets_under_other_traffic_count_as_an_identical_layout(dataset_copy):
    raw = dataset_copy / "raw"
    docs = load_docs(raw)
    train_grid = docs[spec.raw_split_files("train")["inputs"]][0]
    levels = len(spec.CONGESTION_LEVELS)
    retrafficked = [
        t
        if not spec.ROAD_BASE <= t < spec.CLOSED
        else t - (t - spec.ROAD_BASE) % levels + ((t - spec.ROAD_BASE) % levels + 1) % levels
        for t in train_grid
    ]
    assert retrafficked != train_grid
    test_inputs = docs[spec.raw_split_files("test")["inputs"]]
    for k in range(4):
        test_inputs[k] = retrafficked
    write_docs(raw, docs)
    report = validate.validate_dataset(
        validate.ValidateSettings.from_params(small_params(dataset_copy))
    ).report
    assert report.figures["identical_layout_pairs_across_splits"] >= 1
    assert report.figures["identical_map_pairs_across_splits"] == 0


def test_hrm_layout_that_differs_from_raw_is_critical(dataset_copy):
    path = dataset_copy / "hrm" / "train" / "all__labels.npy"
    labels = np.load(path)
    labels[3, 10] = spec.PARK if labels[3, 10] != spec.PARK else spec.BUILDING
    np.save(path, labels)
    (dataset_copy / "hrm" / "test" / "all__vehicle_types.npy").unlink()
    with pytest.raises(UserError) as error:
        validate.run(dataset_copy / "params.yaml")
    message = str(error.value)
    assert "consistency.hrm_layout_agrees" in message
    assert (
        "train/all__labels.npy[3][10] differs from the raw city_routing_paper_train_all__labels.json"
        in message
    )
    assert "test/all__vehicle_types.npy: missing (run the convert stage)" in message


def test_a_tied_label_fails_route_unique_with_its_own_message():
    """A 3x3 open block: the label takes one of two equally cheap routes round the centre building."""
    grid = [S, ST, ST, ST, B, ST, ST, ST, G]
    label = [S, spec.ROUTE, spec.ROUTE, ST, B, spec.ROUTE, ST, ST, G]
    table = np.full((2, spec.VOCAB_SIZE), spec.BLOCKED, dtype=np.int64)
    table[1] = COSTS
    split = RawSplit(
        name="train",
        metadata={},
        inputs=np.array([grid], dtype=np.int64),
        labels=np.array([label], dtype=np.int64),
        puzzle_identifiers=np.array([1]),
        puzzle_indices=np.array([0, 1]),
        group_indices=np.array([0, 1]),
        base_scenario_ids=["train-0000"],
        vehicle_types=["bike"],
    )
    dataset = RawDataset(
        folder=Path("raw"),
        source=SOURCE_GENERATOR,
        splits={"train": split},
        identifiers=["<blank>", "bike"],
        summary={},
        seq_len=9,
        vocab_size=spec.VOCAB_SIZE,
        rows=3,
        cols=3,
        cost_model=None,
    )
    facts = {"train": example_facts(split, table, 3, 3)}
    failures = compliance.example_failures(dataset.splits, facts)
    checks = {check.name: check for check in compliance.route_checks(dataset.splits, failures)}
    assert checks["route_valid"].passed and checks["route_optimal"].passed
    assert not checks["route_unique"].passed and checks["route_unique"].critical
    assert checks["route_unique"].failures == [
        "city_routing_paper_train_all__labels.json[0] (base train-0000, bike): another route has the same "
        "optimal cost (tie)"
    ]


def test_convert_and_validate_hold_the_files_in_one_form(valid_set):
    """validate's dataset (after its collected cross-file checks) is convert's `raw.read_raw`, field by field:
    one split type, one conversion of the documents."""
    converted = raw.read_raw(valid_set / "raw")
    validated, problems = raw.build_dataset(raw.read_files(valid_set / "raw"))
    assert problems == []
    assert type(validated) is type(converted) is RawDataset
    for name in (
        "folder",
        "source",
        "identifiers",
        "summary",
        "seq_len",
        "vocab_size",
        "rows",
        "cols",
        "issues",
    ):
        assert getattr(validated, name) == getattr(converted, name), name
    assert (
        validated.cost_model is None and converted.cost_model is not None
    )  # validate reads the summary's table
    assert list(validated.splits) == list(converted.splits) == list(spec.SPLITS)
    for split in spec.SPLITS:
        a, b = validated.splits[split], converted.splits[split]
        assert type(a) is type(b) is RawSplit and a.name == b.name == split and a.files == b.files
        assert a.metadata == b.metadata
        assert a.base_scenario_ids == b.base_scenario_ids and a.vehicle_types == b.vehicle_types
        for array in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"):
            assert getattr(a, array).dtype == getattr(b, array).dtype == np.int64, array
            assert np.array_equal(getattr(a, array), getattr(b, array)), array
        assert a.example_identifier.tolist() == b.puzzle_identifiers.tolist()  # one example per puzzle
        assert a.example_group.tolist() == [g for g in range(a.num_groups) for _ in range(4)]


# ---- difficulty sub-checks (issue 12) ----------------------------------------------------------------------


def test_difficulty_is_measured_on_the_labels_and_agrees_with_the_generator(dataset_copy):
    settings = validate.ValidateSettings.from_params(small_params(dataset_copy))
    report = validate.validate_dataset(settings).report
    checks = {c.name: c for c in report.checks}
    assert checks["detour_share"].passed and checks["distinct_routes_share"].passed
    assert not checks["detour_share"].critical
    summary = load_docs(dataset_copy / "raw")[spec.RAW_SUMMARY_FILE]
    for split in spec.SPLITS:
        measured, generated = report.figures["difficulty"][split], summary["difficulty"][split]
        assert measured["monotone_share"] == generated["monotone_share"]
        assert (
            measured["detour_share"]
            == generated["detour_share"]
            >= settings.generate.difficulty.min_detour_share
        )
        assert measured["detour_max"] == generated["max_detour"]
        assert measured["turns_mean"] == pytest.approx(generated["mean_turns"], abs=1e-4)
        binned = sum(v for k, v in measured.items() if k.startswith("detour_") and k[7].isdigit())
        assert binned == measured["examples"]  # the histogram's bins cover every example once
    assert checks["detour_share"].value == min(
        report.figures["difficulty"][s]["detour_share"] for s in spec.SPLITS
    )
    markdown = validate.report_markdown(report, dataset_copy / "raw", None)
    assert "## Difficulty: how much search the routes need" in markdown


def test_a_dataset_short_of_the_difficulty_rules_fails_those_checks_only(dataset_copy):
    params = small_params(dataset_copy)
    params["generate"]["difficulty"].update(
        min_detour_share=1.0, min_distinct_routes=4, min_distinct_share=1.0
    )
    report = validate.validate_dataset(validate.ValidateSettings.from_params(params)).report
    failing = {c.name: c for c in report.checks if not c.passed}
    assert set(failing) == {"detour_share", "distinct_routes_share"}
    assert "generate.difficulty.min_detour_share asks for 1.0" in failing["detour_share"].failures[0]
    assert "generate.difficulty.min_distinct_share" in failing["distinct_routes_share"].failures[0]
    assert 0 < failing["detour_share"].score < 1 and not report.critical_failures


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_detour_share": 2}, "generate.difficulty.min_detour_share must be a number in [0, 1], got 2"),
        ({"min_detour": 3}, "generate.difficulty.min_detour must be even"),
    ],
)
def test_bad_difficulty_in_params_stops_validate_naming_the_key(tmp_path, change, message):
    """The stage entry point: the schema (types, ranges) or DifficultyParams (rules between values)."""
    params = small_params(tmp_path)
    params["generate"]["difficulty"].update(change)
    path = write_params(tmp_path, params)
    with pytest.raises(UserError) as caught:
        validate.run(path)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)
    assert not (tmp_path / "reports").exists()
