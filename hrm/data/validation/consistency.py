"""Do the summary file and the HRM layout (`paths.hrm`) agree with the raw files and with params?

Critical, unscored checks: a summary whose costs differ cannot re-check the labels, and a layout that differs
trains a model on data nobody validated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import spec
from hrm.data.conversion.raw import RawDataset, RawSplit
from hrm.data.facts import ExampleFacts
from hrm.data.validation.compliance import Check, first_index, share_check
from hrm.io import UserError, read_json, read_npy, shorten, shown

HRM_ARRAYS = {  # name -> dtype of convert's output (docs/design.md, Data contract: HRM layout)
    "inputs": np.uint8,
    "labels": np.uint8,
    "puzzle_identifiers": np.int32,
    "puzzle_indices": np.int32,
    "group_indices": np.int32,
}
HRM_EXTRA_DTYPE = np.int32
HRM_METADATA_FIELDS = tuple(spec.HRM_METADATA_FIELDS)


def summary_cost_table(summary: dict[str, Any]) -> np.ndarray:
    """The summary's cost table, [1 + vehicles, vocab] int64: what the independent solver uses."""
    return np.asarray(summary["cost_model"]["cost_table"], dtype=np.int64)


def summary_check(
    dataset: RawDataset,
    facts: dict[str, ExampleFacts],
    params_cost_model: spec.CostModel,
    expected_min_route_length: int | None = None,
) -> Check:
    """The summary's grid, tokens, vehicles, counts and per-example routes equal the files' and params'."""
    name = spec.RAW_SUMMARY_FILE
    summary = dataset.summary
    problems: list[str] = []
    grid = summary["grid"]
    if (grid["rows"], grid["cols"], grid["seq_len"]) != (
        dataset.rows,
        dataset.cols,
        dataset.rows * dataset.cols,
    ):
        problems.append(
            f"{name}: grid = {shorten(str(grid))}, the split files have {dataset.rows} x {dataset.cols}"
        )
    token_table = [(entry["id"], entry["name"]) for entry in summary["tokens"]]
    if token_table != list(enumerate(spec.token_names())):
        problems.append(f"{name}: tokens differ from the token table of hrm/data/spec.py")
    if summary["identifiers"] != dataset.identifiers:
        problems.append(
            f"{name}: identifiers = {shorten(str(summary['identifiers']))} but {spec.RAW_IDENTIFIERS_FILE} has {shorten(str(dataset.identifiers))}"
        )
    model = summary["cost_model"]
    table = summary_cost_table(summary)
    try:
        rebuilt = spec.CostModel.from_dict(model, source=f"{name}: cost_model").cost_table()
    except ValueError as err:
        problems.append(str(err))
        rebuilt = None
    if rebuilt is not None and not np.array_equal(rebuilt, table):
        problems.append(f"{name}: cost_model.cost_table does not follow from cost_model.vehicles")
    if table.shape != (len(dataset.identifiers), spec.VOCAB_SIZE):
        problems.append(
            f"{name}: cost_model.cost_table has shape {list(table.shape)}, expected "
            f"[{len(dataset.identifiers)}, {spec.VOCAB_SIZE}] (identifiers x tokens)"
        )
    elif not np.array_equal(table, params_cost_model.cost_table()):
        problems.append(
            f"{name}: cost_model differs from params.yaml generate.vehicles: the labels were made with other "
            "costs (run the generate stage again)"
        )
    summary_names = [vehicle["name"] for vehicle in model["vehicles"]]
    if ["<blank>", *summary_names] != dataset.identifiers:
        problems.append(
            f"{name}: cost_model.vehicles {shorten(str(summary_names))} do not match {spec.RAW_IDENTIFIERS_FILE}"
        )
    min_length = summary.get("params", {}).get("min_route_length")
    if expected_min_route_length is not None and min_length != expected_min_route_length:
        problems.append(
            f"{name}: params.min_route_length = {shorten(str(min_length))}, params.yaml has {expected_min_route_length}"
        )

    checked_items = len(problems) + 1
    for split_name in dataset.splits:
        checked_items += _summary_split_problems(dataset, facts[split_name], split_name, problems)
    return share_check(
        "summary_agrees",
        "consistency",
        "the summary's grid, tokens, cost model (= params), counts and per-example routes agree with the files",
        problems,
        checked_items,
    )


def _summary_split_problems(
    dataset: RawDataset, f: ExampleFacts, split_name: str, problems: list[str]
) -> int:
    """The summary's counts, per-example records and base endpoints of one split against the files; appends
    to `problems` and returns the number of example records compared."""
    name = spec.RAW_SUMMARY_FILE
    summary = dataset.summary
    split = dataset.splits[split_name]
    counts = summary["counts"].get(split_name, {})
    found = {"bases": split.num_groups, "examples": split.num_examples}
    for key, value in found.items():
        if counts.get(key) != value:
            problems.append(
                f"{name}: counts.{split_name}.{key} = {shorten(str(counts.get(key)))}, the files hold {value}"
            )
    records = summary["examples"][split_name]
    if len(records) != split.num_examples:
        problems.append(
            f"{name}: examples.{split_name} has {len(records)} entries, the files hold {split.num_examples}"
        )
        return 0
    for i, record in enumerate(records):
        where = f"{name}: examples.{split_name}[{i}]"
        if (
            record["base_scenario_id"] != split.base_scenario_ids[i]
            or record["vehicle"] != split.vehicle_types[i]
        ):
            problems.append(
                f"{where} is ({shorten(str(record['base_scenario_id']))}, {shorten(str(record['vehicle']))}) but "
                f"{split.where('base_scenario_ids', i)} / vehicle_types say ({shorten(str(split.base_scenario_ids[i]))}, {shorten(str(split.vehicle_types[i]))})"
            )
        elif record["route_length"] != int(f.route_length[i]):
            problems.append(
                f"{where}.route_length = {shorten(str(record['route_length']))} but {split.where('labels', i)} marks "
                f"{int(f.route_length[i])} cells"
            )
        elif f.route_valid[i] and record["route_cost"] != f.route_cost[i]:
            problems.append(
                f"{where}.route_cost = {shorten(str(record['route_cost']))} but {split.where('labels', i)}'s route costs "
                f"{f.route_cost[i]:.0f}"
            )
    problems.extend(_base_endpoint_problems(dataset, split_name))
    return len(records)


def _base_endpoint_problems(dataset: RawDataset, split_name: str) -> list[str]:
    records = dataset.summary.get("bases", {}).get(split_name)
    if records is None:
        return []
    split = dataset.splits[split_name]
    first_example = first_index(split.base_scenario_ids)
    problems = []
    for k, record in enumerate(records):
        i = first_example.get(record["base_scenario_id"])
        where = f"{spec.RAW_SUMMARY_FILE}: bases.{split_name}[{k}]"
        if i is None:
            problems.append(
                f"{where}: base {shorten(str(record['base_scenario_id']))} has no example in the split files"
            )
            continue
        grid = split.inputs[i]
        for key, token in (("start", spec.START), ("goal", spec.GOAL)):
            cell = record[key]
            if not (0 <= cell < grid.size and grid[cell] == token):
                problems.append(
                    f"{where}.{key} = {shorten(str(cell))} but that cell of {split.where('inputs', i)} is not the {key}"
                )
    return problems


def _load(path: Path, problems: list[str], npy: bool = False) -> Any:
    """The document or array at `path`, or None with the problem noted."""
    if not path.is_file():
        problems.append(f"{path}: missing (run the convert stage)")
        return None
    try:
        return read_npy(path) if npy else read_json(path, "run the convert stage")
    except UserError as err:
        problems.append(f"{path}: unreadable ({str(err).removeprefix(f'{path}: ')})")
    return None


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    index = np.argwhere(a != b)[0]
    return "[" + "][".join(str(int(i)) for i in index) + "]"


def _layout_split_problems(split: RawSplit, folder: Path, problems: list[str]) -> int:
    """One split folder of the HRM layout against the raw split: metadata, each array's dtype, shape and
    values, the base numbering; appends to `problems`, returns the number of items compared."""
    metadata = _load(folder / "dataset.json", problems)
    if metadata is not None:
        for key in HRM_METADATA_FIELDS:
            if metadata.get(key) != split.metadata[key]:
                problems.append(
                    f"{folder / 'dataset.json'}: {key} = {shown(metadata.get(key))} but "
                    f"{split.files['dataset']} has {shown(split.metadata[key])}"
                )
    expected_arrays = {
        "inputs": split.inputs,
        "labels": split.labels,
        "puzzle_identifiers": split.puzzle_identifiers,
        "puzzle_indices": split.puzzle_indices,
        "group_indices": split.group_indices,
        "vehicle_types": split.example_identifier,
    }
    for array_name, expected in expected_arrays.items():
        path = folder / f"all__{array_name}.npy"
        array = _load(path, problems, npy=True)
        if array is None:
            continue
        dtype = HRM_ARRAYS.get(array_name, HRM_EXTRA_DTYPE)
        if array.dtype != dtype:
            problems.append(f"{path}: dtype {array.dtype}, expected {np.dtype(dtype)}")
        if array.shape != expected.shape:
            problems.append(f"{path}: shape {list(array.shape)}, raw files give {list(expected.shape)}")
        elif not np.array_equal(array, expected):
            problems.append(
                f"{path}{_first_difference(array, expected)} differs from the raw "
                f"{split.files.get(array_name, split.files['puzzle_identifiers'])}"
            )
    path = folder / "all__base_scenario_ids.npy"
    bases = _load(path, problems, npy=True)
    if bases is not None:
        if bases.dtype != HRM_EXTRA_DTYPE or bases.shape != (split.num_examples,):
            problems.append(
                f"{path}: dtype {bases.dtype} shape {list(bases.shape)}, expected int32 [{split.num_examples}]"
            )
        else:
            # the same base <-> the same number, whatever numbering convert chose
            base_ids, numbers = split.base_scenario_ids, bases.tolist()
            pairs = set(zip(base_ids, numbers, strict=True))
            if len(pairs) != len(set(base_ids)) or len(pairs) != len(set(numbers)):
                problems.append(
                    f"{path}: does not number the bases of {split.files['base_scenario_ids']} one to one"
                )
    return 2 + len(expected_arrays)


def hrm_layout_check(dataset: RawDataset, hrm_dir: str | Path) -> Check:
    """Every array and metadata file of the HRM layout equals what the raw files say."""
    hrm_dir = Path(hrm_dir)
    problems: list[str] = []
    items = 0
    if not hrm_dir.is_dir():
        problems.append(f"{hrm_dir}: HRM layout folder not found (run the convert stage)")
    else:
        items += 2
        identifiers = _load(hrm_dir / "identifiers.json", problems)
        if identifiers is not None and identifiers != dataset.identifiers:
            problems.append(
                f"{hrm_dir / 'identifiers.json'}: {shorten(str(identifiers))} differs from {spec.RAW_IDENTIFIERS_FILE}"
            )
        routing_doc = _load(hrm_dir / spec.HRM_ROUTING_FILE, problems)
        if routing_doc is not None:
            expected = dict(dataset.summary["cost_model"], rows=dataset.rows, cols=dataset.cols)
            if routing_doc != expected:
                keys = sorted(
                    k for k in set(expected) | set(routing_doc) if expected.get(k) != routing_doc.get(k)
                )
                problems.append(
                    f"{hrm_dir / spec.HRM_ROUTING_FILE}: differs from the summary's cost_model + rows/cols at {keys}"
                )
        for split_name, split in dataset.splits.items():
            items += _layout_split_problems(split, hrm_dir / split_name, problems)
    return share_check(
        "hrm_layout_agrees",
        "consistency",
        f"the HRM layout in {hrm_dir} holds exactly the raw files' arrays, dtypes and metadata",
        problems,
        max(items, 1),
    )
