"""Broken and hostile data files (docs/threat-model.md): each gives one UserError naming the file and where,
before any long work; never a traceback, a huge allocation or a 50 MB message."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy_format

from hrm.data import spec
from hrm.data.conversion import raw
from hrm.data.validation import validate
from hrm.evaluation.data import load_route_task, load_split
from hrm.io import MAX_JSON_DEPTH, UserError, read_json
from hrm.training.data import PuzzleDataset
from tests.hrm_layout import write_dataset
from tests.routing_layout import paper_cost_model
from tests.validate_data import (
    REPO,
    copy_set,
    load_docs,
    make_valid_set,
    small_params,
    split_docs,
    write_docs,
    write_params,
)

TRAIN = spec.raw_split_files("train")
LONG = "x" * 5_000_000  # a field holding megabytes
MESSAGE_CHARS = 2000  # a whole error (file, field, index, a shortened value) fits well within this


@pytest.fixture(scope="module")
def valid_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("valid")
    make_valid_set(root)
    return root


def _raw_folder_with(folder: Path, name: str, text: str) -> Path:
    """The 18 raw names, each an empty list, `name` holding `text`: enough for the reader to open every file."""
    folder.mkdir(parents=True, exist_ok=True)
    for other in spec.raw_file_names():
        (folder / other).write_text("[]", encoding="utf-8")
    (folder / name).write_text(text, encoding="utf-8")
    return folder


# ---- deep nesting ----------------------------------------------------------------------------------------


def test_deeply_nested_json_is_refused_naming_file_and_limit(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    folder = _raw_folder_with(tmp_path / "raw", TRAIN["inputs"], deep)
    expected = rf"{TRAIN['inputs']}: JSON nested 100000 levels deep; at most {MAX_JSON_DEPTH} are read"
    with pytest.raises(UserError, match=expected):
        raw.read_raw(folder)  # convert's reader
    (tmp_path / "dataset.json").write_text(deep, encoding="utf-8")
    with pytest.raises(UserError, match=r"dataset.json: JSON nested 100000 levels deep"):
        read_json(tmp_path / "dataset.json", "run convert")  # the trainer's and evaluate's reader


def test_convert_stage_exits_1_on_deep_nesting_without_traceback(tmp_path: Path) -> None:
    folder = _raw_folder_with(tmp_path / "raw", TRAIN["labels"], '{"a":' + "[" * 50_000 + "]" * 50_000 + "}")
    params = small_params(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "convert.py"),
            "--params",
            str(write_params(tmp_path, params)),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{folder / TRAIN['labels']}: JSON nested 50001 levels deep" in result.stderr
    assert not (tmp_path / "hrm").exists()


# ---- long values in messages and reports -----------------------------------------------------------------


def test_a_megabyte_value_is_shortened_in_messages_and_reports(valid_set: Path, tmp_path: Path) -> None:
    params = copy_set(valid_set, tmp_path)
    quiet = small_params(tmp_path)
    quiet["validate"]["plot_examples"] = 0
    write_params(tmp_path, quiet)
    docs = load_docs(tmp_path / "raw")
    split_docs(docs, "train")["vehicle_types"][0] = LONG
    write_docs(tmp_path / "raw", docs)
    with pytest.raises(UserError) as convert_error:
        raw.read_raw(tmp_path / "raw")
    message = str(convert_error.value)
    assert f"{TRAIN['vehicle_types']}: field 'vehicle_types' index 0: unknown vehicle 'xxx" in message
    assert f"... ({len(LONG)} chars)" in message and len(message) < MESSAGE_CHARS
    with pytest.raises(UserError) as validate_error:
        validate.run(params)
    assert len(str(validate_error.value)) < 10 * MESSAGE_CHARS
    assert f"{TRAIN['vehicle_types']}: field 'vehicle_types' index 0: 'xxx" in str(validate_error.value)
    for report in (tmp_path / "reports").iterdir():
        assert report.stat().st_size < 100_000, report.name


# ---- non-finite numbers and the cost table ----------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_number_in_dataset_json_is_refused(tmp_path: Path, token: str) -> None:
    write_dataset(tmp_path, train_groups=2, test_examples=2)
    path = tmp_path / "train" / "dataset.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    text = json.dumps(metadata).replace(
        f'"mean_puzzle_examples": {json.dumps(metadata["mean_puzzle_examples"])}',
        f'"mean_puzzle_examples": {token}',
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=rf"dataset.json: \$\.mean_puzzle_examples is {token}, not a finite"):
        PuzzleDataset(tmp_path, "train")


@pytest.mark.parametrize("cost", ["1e30", "1.5", "-5", str(2**60), "true"])
def test_cost_table_entry_outside_integer_costs_is_refused(tmp_path: Path, cost: str) -> None:
    rows = cols = 6
    routing_json = dict(paper_cost_model().to_dict(), rows=rows, cols=cols)
    routing_json["cost_table"][2][5] = "COST"
    path = tmp_path / spec.HRM_ROUTING_FILE
    path.write_text(json.dumps(routing_json).replace('"COST"', cost), encoding="utf-8")
    metadata = SimpleNamespace(seq_len=rows * cols, num_puzzle_identifiers=len(routing_json["cost_table"]))
    limit = 2**53 // (rows * cols)
    with pytest.raises(
        UserError, match=rf"routing.json: field 'cost_table' index \[2\]\[5\]: .* 0\.\.{limit}"
    ):
        load_route_task(tmp_path, metadata)


def test_nan_cost_is_refused_when_read(tmp_path: Path) -> None:
    routing_json = dict(paper_cost_model().to_dict(), rows=6, cols=6)
    routing_json["cost_table"][1][7] = float("nan")
    (tmp_path / spec.HRM_ROUTING_FILE).write_text(json.dumps(routing_json), encoding="utf-8")
    metadata = SimpleNamespace(seq_len=36, num_puzzle_identifiers=5)
    with pytest.raises(
        UserError, match=r"routing.json: \$\.cost_table\[1\]\[7\] is NaN, not a finite number"
    ):
        load_route_task(tmp_path, metadata)


# ---- .npy headers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inputs", "puzzle_identifiers"])  # memory-mapped, and read whole
def test_npy_header_claiming_more_than_the_file_holds_is_refused(tmp_path: Path, name: str) -> None:
    write_dataset(tmp_path, train_groups=2, test_examples=2)
    path = tmp_path / "train" / f"all__{name}.npy"
    shape = (10**12, 8) if name == "inputs" else (10**12,)
    with open(path, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "<i8", "fortran_order": False, "shape": shape})
        handle.write(bytes(64))
    with pytest.raises(
        UserError, match=rf"all__{name}.npy: header claims shape \({10**12},.* 64 bytes of data"
    ):
        PuzzleDataset(tmp_path, "train")


def test_base_ids_npy_goes_through_the_same_check(tmp_path: Path) -> None:
    write_dataset(tmp_path, train_groups=2, test_examples=2)
    with open(tmp_path / "test" / "all__base_scenario_ids.npy", "wb") as handle:
        npy_format.write_array_header_1_0(
            handle, {"descr": "<i4", "fortran_order": False, "shape": (10**12,)}
        )
    with pytest.raises(UserError, match=r"all__base_scenario_ids.npy: header claims shape"):
        load_split(tmp_path, "test")


# ---- empty splits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_refused_naming_its_dataset_json(tmp_path: Path, split: str) -> None:
    write_dataset(tmp_path, train_groups=2, test_examples=2)
    folder = tmp_path / split
    arrays = {
        "inputs": np.zeros((0, 8), np.uint8),
        "labels": np.zeros((0, 8), np.uint8),
        "puzzle_identifiers": np.zeros(0, np.int32),
        "puzzle_indices": np.zeros(1, np.int32),
        "group_indices": np.zeros(1, np.int32),
    }
    for name, array in arrays.items():
        np.save(folder / f"all__{name}.npy", array)
    metadata = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    metadata.update(total_groups=0, mean_puzzle_examples=0)
    (folder / "dataset.json").write_text(json.dumps(metadata), encoding="utf-8")
    message = rf"{split}/dataset.json: the {split} split holds no examples"
    with pytest.raises(UserError, match=message):
        PuzzleDataset(tmp_path, split)  # the trainer's reader, before any step
    with pytest.raises(UserError, match=message):
        load_split(tmp_path, split)  # evaluate's


# ---- any JSON document: read, or one UserError -------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: json.dumps writes them, the reader must refuse them
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def raw_copy(valid_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("property") / "raw"
    shutil.copytree(valid_set / "raw", target)
    return target


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(spec.raw_file_names()),
    value=JSON_VALUES,
    whole_file=st.booleans(),
    nesting=st.integers(min_value=0, max_value=40) | st.integers(min_value=1000, max_value=5000),
)
def test_any_json_document_reads_or_gives_a_user_error(
    raw_copy: Path, name, value, whole_file, nesting
) -> None:
    """A raw file replaced by a random document, or one of its fields or entries by a random value (inside
    `nesting` lists: a few, or beyond Python's recursion limit): convert's reader returns or raises
    UserError, never another exception."""
    path = raw_copy / name
    original = path.read_text(encoding="utf-8")
    placeholder = "\x00hostile value"
    document = json.loads(original)
    if whole_file or not document:
        document = placeholder
    elif isinstance(document, dict):
        document[sorted(document)[len(document) // 2]] = placeholder
    else:
        document[len(document) // 2] = placeholder
    nested = "[" * nesting + json.dumps(value) + "]" * nesting
    try:
        path.write_text(json.dumps(document).replace(json.dumps(placeholder), nested), encoding="utf-8")
        raw.read_raw(raw_copy)
    except UserError:
        pass
    finally:
        path.write_text(original, encoding="utf-8")
