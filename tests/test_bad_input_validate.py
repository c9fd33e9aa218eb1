"""Corrupted file sets: each is rejected with its own message naming file, field and index; nothing already
in the report folder is half-overwritten; the stage exits 1 without a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hrm.data import routing, spec
from hrm.data.validation import validate
from hrm.io import UserError
from tests.validate_data import (
    REPO,
    copy_set,
    load_docs,
    make_valid_set,
    remove_example,
    small_params,
    split_docs,
    summary_examples,
    write_docs,
    write_params,
)

TRAIN = spec.raw_split_files("train")
TEST = spec.raw_split_files("test")


@pytest.fixture(scope="module")
def valid_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    make_valid_set(root)
    return root


def _rewrite(raw: Path, edit: Callable[[dict], None]) -> None:
    docs = load_docs(raw)
    edit(docs)
    write_docs(raw, docs)


def _disconnect_route(docs: dict) -> None:
    label = split_docs(docs, "train")["labels"][5]
    inputs = split_docs(docs, "train")["inputs"][5]
    route = [i for i, token in enumerate(label) if token == spec.ROUTE]
    middle = route[len(route) // 2]
    label[middle] = inputs[middle]


def _non_optimal_route(docs: dict) -> None:
    """Replace one label's route by the best route that avoids one of its cells: valid, but dearer."""
    summary = docs[spec.RAW_SUMMARY_FILE]
    table = np.asarray(summary["cost_model"]["cost_table"])
    rows, cols = summary["grid"]["rows"], summary["grid"]["cols"]
    d = split_docs(docs, "train")
    for i, (grid, label) in enumerate(zip(d["inputs"], d["labels"], strict=True)):
        grid = np.asarray(grid)
        costs = routing.cell_costs(grid, table[d["puzzle_identifiers"][i]])
        start, goal = int(np.flatnonzero(grid == spec.START)[0]), int(np.flatnonzero(grid == spec.GOAL)[0])
        for cell in [c for c, token in enumerate(label) if token == spec.ROUTE]:
            barred = costs.copy()
            barred[cell] = -1
            detour = routing.solve(barred, start, goal, rows, cols, count_cap=1)
            if detour.cost is None:
                continue
            new_label = grid.tolist()
            for c in detour.path[1:-1]:
                new_label[c] = spec.ROUTE
            d["labels"][i] = new_label
            summary_examples(docs, "train")[i].update(route_length=len(detour.path), route_cost=detour.cost)
            return
    raise AssertionError("no example with a detour in the test set")


def _duplicate_example(docs: dict) -> None:
    d = split_docs(docs, "train")  # group 2 = examples 8..11 (bike, car, van, truck): the van becomes a car
    d["labels"][10] = list(d["labels"][9])
    d["vehicle_types"][10] = "car"
    d["puzzle_identifiers"][10] = 2
    summary_examples(docs, "train")[10].update(summary_examples(docs, "train")[9])


def _identical_grid_across_splits(docs: dict) -> None:
    train, test = split_docs(docs, "train"), split_docs(docs, "test")
    for k in range(4):
        test["inputs"][k] = list(train["inputs"][k])
        test["labels"][k] = list(train["labels"][k])


def _overlapping_bases(docs: dict) -> None:
    test = split_docs(docs, "test")
    for k in range(4):
        test["base_scenario_ids"][k] = "train-0001"


def _set(kind: str, path: tuple, value) -> Callable[[dict], None]:
    def edit(docs: dict) -> None:
        target = docs[kind]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return edit


def _delete(name: str) -> Callable[[Path], None]:
    return lambda raw: (raw / name).unlink()


def _truncate(name: str) -> Callable[[Path], None]:
    def corrupt(raw: Path) -> None:
        text = (raw / name).read_text()
        (raw / name).write_text(text[: len(text) // 2])

    return corrupt


def _edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda raw: _rewrite(raw, edit)


def _swap_puzzle_indices(docs: dict) -> None:
    indices = docs[TRAIN["puzzle_indices"]]
    indices[3], indices[4] = indices[4], indices[3]


def _two_starts(docs: dict) -> None:
    d = split_docs(docs, "test")
    grid = d["inputs"][2]
    cell = next(
        i
        for i, token in enumerate(grid)
        if token == spec.road_token("street", 0) and d["labels"][2][i] != spec.ROUTE
    )
    d["inputs"][2] = grid[:cell] + [spec.START] + grid[cell + 1 :]
    d["labels"][2][cell] = spec.START


def _label_changes_a_building(docs: dict) -> None:
    label = split_docs(docs, "train")["labels"][0]
    cell = label.index(spec.BUILDING)
    label[cell] = spec.PARK


# name -> (corruption of the raw folder, regexes the error must match)
CORRUPTIONS = {
    "missing file": (_delete(TRAIN["labels"]), [rf"{TRAIN['labels']}: file not found"]),
    "truncated JSON": (_truncate(TEST["inputs"]), [rf"{TEST['inputs']}: truncated JSON"]),
    "wrong type in an index file": (
        _edit(_set(TRAIN["puzzle_identifiers"], (3,), "car")),
        [rf"{TRAIN['puzzle_identifiers']}: \$\[3\]: 'car' is not of type 'integer'"],
    ),
    "wrong type in a grid": (
        _edit(_set(TRAIN["inputs"], (2, 5), True)),
        [rf"{TRAIN['inputs']}: \$\[2\]\[5\]: True is not of type 'integer'"],
    ),
    "wrong type in metadata": (
        _edit(_set(TEST["dataset"], ("seq_len",), "144")),
        [rf"{TEST['dataset']}: \$\.seq_len: '144' is not of type 'integer'"],
    ),
    "wrong type in the summary": (
        _edit(_set(spec.RAW_SUMMARY_FILE, ("examples", "test", 3, "route_cost"), "12")),
        [rf"{spec.RAW_SUMMARY_FILE}: \$\.examples\.test\[3\]\.route_cost: '12' is not of type 'integer'"],
    ),
    "lengths that disagree": (
        _edit(lambda docs: docs[TRAIN["labels"]].pop()),
        [rf"{TRAIN['labels']}: field 'labels' has shape \[23, 144\] but {TRAIN['inputs']} has \[24, 144\]"],
    ),
    "grid shorter than seq_len": (
        _edit(_set(TRAIN["labels"], (4,), lambda grid: grid[:-1])),
        [rf"{TRAIN['labels']}: field 'labels' index 4: has 143 tokens but index 0 has 144"],
    ),
    "seq_len not rows x cols": (
        _edit(_set(TEST["dataset"], ("rows",), 13)),
        [rf"{TEST['dataset']}: field 'seq_len' is 144 but rows x cols = 13 x 12 = 156"],
    ),
    "vocabulary size not the token table's": (
        _edit(lambda docs: [docs[f["dataset"]].update(vocab_size=25) for f in (TRAIN, TEST)]),
        [rf"tokens\.encoding.*\n.*{TRAIN['dataset']}: vocab_size = 25, the token table has 24"],
    ),
    "out-of-range token": (
        _edit(_set(TEST["inputs"], (1, 7), 99)),
        [
            rf"{TEST['inputs']}: field 'inputs' index 1, position 7: token 99 is not allowed here \(allowed 0\.\.23"
        ],
    ),
    "non-monotone indices": (
        _edit(_swap_puzzle_indices),
        [
            rf"{TRAIN['puzzle_indices']}: field 'puzzle_indices' index 4: 3 after 4, indices must rise strictly"
        ],
    ),
    "group indices end short": (
        _edit(_set(TEST["group_indices"], (-1,), lambda last: last - 1)),
        [
            rf"{TEST['group_indices']}: field 'group_indices' index 3: ends at 11 but the number of puzzles is 12"
        ],
    ),
    "puzzle identifier out of range": (
        _edit(_set(TRAIN["puzzle_identifiers"], (0,), 7)),
        [
            rf"{TRAIN['puzzle_identifiers']}: field 'puzzle_identifiers' index 0: 7 is not an id of {spec.RAW_IDENTIFIERS_FILE} \(0\.\.4\)"
        ],
    ),
    "vehicle disagrees with its identifier": (
        _edit(_set(TRAIN["vehicle_types"], (0,), "truck")),
        [
            rf"{TRAIN['vehicle_types']}: field 'vehicle_types' index 0: 'truck' but its puzzle 0 has identifier 1 = 'bike'"
        ],
    ),
    "overlapping bases": (
        _edit(_overlapping_bases),
        [
            rf"methodology\.base_overlap.*\n.*base train-0001 is in both {TRAIN['base_scenario_ids']}\[4\] and {TEST['base_scenario_ids']}\[0\]"
        ],
    ),
    "identical grid in train and test": (
        _edit(_identical_grid_across_splits),
        [
            rf"{TEST['inputs']}\[0\] \(base test-0000\) is identical to {TRAIN['inputs']}\[0\] \(base train-0000\)"
        ],
    ),
    "missing vehicle": (
        _edit(lambda docs: remove_example(docs, "train", 11)),
        [
            rf"{TRAIN['group_indices']} group 2 \(base train-0002\): vehicles \['bike', 'car', 'van'\], missing \['truck'\]",
            r"train examples \(6 bases x 4 vehicles, params.yaml\): found 23, expected 24",
        ],
    ),
    "duplicated example": (
        _edit(_duplicate_example),
        [
            rf"{TRAIN['vehicle_types']}\[1[01]\]: duplicated example, another row has the same \(split, "
            r"base_scenario_id, vehicle\) = \(train, train-0002, car\)",
            r"missing \['van'\], extra \['car'\]",
        ],
    ),
    "disconnected route": (
        _edit(_disconnect_route),
        [
            rf"route_optimality\.route_valid.*\n.*{TRAIN['labels']}\[5\] \(base train-0001, car\): invalid route: "
        ],
    ),
    "non-optimal route": (
        _edit(_non_optimal_route),
        [
            rf"route_optimality\.route_optimal.*\n.*{TRAIN['labels']}\[\d+\] \(base train-\d+, \w+\): route costs (\d+) but the optimum is (\d+)"
        ],
    ),
    "two start cells": (
        _edit(_two_starts),
        [rf"{TEST['inputs']}\[2\] \(base test-0000, van\): 2 start / 1 goal cells in the input"],
    ),
    "label changes a non-route cell": (
        _edit(_label_changes_a_building),
        [rf"{TRAIN['labels']}\[0\]\[\d+\] = 2 but the input has 1: only route marks may differ"],
    ),
    "summary cost disagrees with the label": (
        _edit(_set(spec.RAW_SUMMARY_FILE, ("examples", "train", 0, "route_cost"), lambda cost: cost + 1)),
        [
            rf"{spec.RAW_SUMMARY_FILE}: examples\.train\[0\]\.route_cost = \d+ but {TRAIN['labels']}\[0\]'s route costs \d+"
        ],
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_set_is_rejected_with_its_own_message(name, valid_set, tmp_path):
    corrupt, patterns = CORRUPTIONS[name]
    params = copy_set(valid_set, tmp_path)
    _no_plot(tmp_path)
    corrupt(tmp_path / "raw")
    with pytest.raises(UserError) as error:
        validate.run(params)
    message = str(error.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{name}: {pattern!r} not in\n{message}"
    others = [patterns[0] for other, (_, patterns) in CORRUPTIONS.items() if other != name]
    assert not [p for p in others if re.search(p, message)], f"{name}: another corruption's message matches"
    if name == "non-optimal route":
        cost, optimum = map(int, re.search(patterns[0], message).groups())
        assert cost > optimum


def test_params_asking_for_more_bases_fail_the_counts(valid_set, tmp_path):
    copy_set(valid_set, tmp_path)
    params = small_params(tmp_path)
    params["generate"]["train_bases"] = 7
    params["validate"]["plot_examples"] = 0
    with pytest.raises(
        UserError, match=r"train examples \(7 bases x 4 vehicles, params.yaml\): found 24, expected 28"
    ):
        validate.run(write_params(tmp_path, params))


def _no_plot(root: Path) -> None:
    params = small_params(root)
    params["validate"]["plot_examples"] = 0
    write_params(root, params)


def _report_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "reports").iterdir())}


def test_unreadable_data_is_audited_and_the_reports_replaced_whole(valid_set, tmp_path):
    """A file that cannot be read still gets a report (audit mode): the earlier reports are replaced whole,
    the earlier scenarios.png (of other data) goes, no temp file is left and the data are not touched."""
    params = copy_set(valid_set, tmp_path)
    validate.run(params)
    before = _report_bytes(tmp_path)
    _truncate(TRAIN["labels"])(tmp_path / "raw")
    raw_before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    with pytest.raises(UserError, match="truncated JSON"):
        validate.run(params)
    after = _report_bytes(tmp_path)
    assert sorted(after) == ["compliance.json", "compliance.md", "score.json"] and after != before
    metrics = json.loads(after["compliance.json"])
    assert metrics["passed"] is False and metrics["checks"]["methodology.file_schemas"] < 1
    assert "methodology.structure" in metrics["not_run"] and b"truncated JSON" in after["compliance.md"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == raw_before


def test_failing_data_replaces_reports_whole(valid_set, tmp_path):
    params = copy_set(valid_set, tmp_path)
    validate.run(params)
    _edit(_overlapping_bases)(tmp_path / "raw")
    with pytest.raises(UserError, match="base_overlap"):
        validate.run(params)
    after = _report_bytes(tmp_path)
    assert sorted(after) == ["compliance.json", "compliance.md", "scenarios.png", "score.json"]
    metrics = json.loads(after["compliance.json"])
    assert metrics["passed"] is False and metrics["checks"]["methodology.base_overlap"] == 1
    assert b"**FAIL**" in after["compliance.md"] and b"base train-0001 is in both" in after["compliance.md"]


def test_stage_script_exits_1_without_traceback(valid_set, tmp_path):
    params = copy_set(valid_set, tmp_path)
    _no_plot(tmp_path)
    _edit(_set(TEST["inputs"], (1, 7), 99))(tmp_path / "raw")
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "validate.py"), "--params", str(params)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert re.search(
        rf"error: data validation failed.*\n(.*\n)*.*{TEST['inputs']}: field 'inputs' index 1, position 7: token 99",
        result.stderr,
    )
