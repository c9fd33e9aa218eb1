"""convert: our files round-trip into HRM's layout; the original tool's files convert with their real
seq_len or are refused; every broken file set gets its own message, exit code 1, and no output damage."""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hrm.data import spec
from hrm.data.conversion import convert, raw
from hrm.data.generation import generate
from hrm.io import UserError
from tests.conftest import write_params_file
from tests.test_generate import small_params

HRM_METADATA_FIELDS = {
    "pad_id",
    "ignore_label_id",
    "blank_identifier_id",
    "vocab_size",
    "seq_len",
    "num_puzzle_identifiers",
    "total_groups",
    "mean_puzzle_examples",
    "sets",
}
ARRAYS = {
    "inputs": np.uint8,
    "labels": np.uint8,
    "puzzle_identifiers": np.int32,
    "puzzle_indices": np.int32,
    "group_indices": np.int32,
    "base_scenario_ids": np.int32,
    "vehicle_types": np.int32,
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw") / "raw"
    generate.generate(small_params(), folder, progress=False)
    return folder


@pytest.fixture
def raw_copy(generated, tmp_path) -> Path:
    folder = tmp_path / "raw"
    shutil.copytree(generated, folder)
    return folder


def read_json(path: Path):
    return json.loads(path.read_text())


def load_like_hrm(root: Path, split: str) -> tuple[dict, dict]:
    """What HRM's PuzzleDataset does: metadata from dataset.json, inputs/labels memory-mapped, the rest loaded."""
    metadata = read_json(root / split / "dataset.json")
    arrays = {}
    for name in ARRAYS:
        mmap = "r" if name in ("inputs", "labels") else None
        arrays[name] = np.load(root / split / f"all__{name}.npy", mmap_mode=mmap, allow_pickle=False)
    return metadata, arrays


def test_our_files_round_trip_into_hrm_layout(generated, tmp_path):
    out = tmp_path / "hrm"
    report = convert.convert(generated, out, strict=True)
    assert report["source"] == raw.SOURCE_GENERATOR and report["issues"] == []
    summary = read_json(generated / spec.RAW_SUMMARY_FILE)
    assert read_json(out / "identifiers.json") == ["<blank>", "bike", "car", "van", "truck"]
    routing_doc = read_json(out / spec.HRM_ROUTING_FILE)
    assert routing_doc["rows"] == routing_doc["cols"] == 12
    assert routing_doc["cost_table"] == summary["cost_model"]["cost_table"]
    for split, bases in (("train", 3), ("test", 2)):
        files = spec.raw_split_files(split)
        metadata, arrays = load_like_hrm(out, split)
        assert set(metadata) == HRM_METADATA_FIELDS
        assert metadata["seq_len"] == 144 and metadata["vocab_size"] == spec.VOCAB_SIZE
        assert metadata["num_puzzle_identifiers"] == 5 and metadata["total_groups"] == bases
        assert metadata["mean_puzzle_examples"] == 1.0 and metadata["sets"] == ["all"]
        assert metadata["pad_id"] == metadata["ignore_label_id"] == metadata["blank_identifier_id"] == 0
        for name, dtype in ARRAYS.items():
            assert arrays[name].dtype == dtype, name
        n = 4 * bases
        assert arrays["inputs"].shape == arrays["labels"].shape == (n, 144)
        np.testing.assert_array_equal(arrays["inputs"], read_json(generated / files["inputs"]))
        np.testing.assert_array_equal(arrays["labels"], read_json(generated / files["labels"]))
        np.testing.assert_array_equal(
            arrays["puzzle_identifiers"], read_json(generated / files["puzzle_identifiers"])
        )
        assert arrays["puzzle_indices"].tolist() == list(range(n + 1))
        assert arrays["group_indices"].tolist() == list(range(0, n + 1, 4))
        assert arrays["base_scenario_ids"].tolist() == [b for b in range(bases) for _ in range(4)]
        assert arrays["vehicle_types"].tolist() == arrays["puzzle_identifiers"].tolist()
        # HRM's sampling view: group g -> puzzles -> example rows; one map per group, 4 vehicles
        for group in range(bases):
            puzzles = range(arrays["group_indices"][group], arrays["group_indices"][group + 1])
            rows = [
                r
                for p in puzzles
                for r in range(arrays["puzzle_indices"][p], arrays["puzzle_indices"][p + 1])
            ]
            assert len(rows) == 4 and sorted(arrays["puzzle_identifiers"][list(puzzles)].tolist()) == [
                1,
                2,
                3,
                4,
            ]
            assert all((arrays["inputs"][r] == arrays["inputs"][rows[0]]).all() for r in rows)
        assert int(arrays["labels"].min()) > 0  # no cell is the ignore label


def test_conversion_is_byte_identical(generated, tmp_path):
    convert.convert(generated, tmp_path / "a")
    convert.convert(generated, tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


# ---- the original browser tool's files ----
def make_original_tool_set(folder: Path, claimed_seq_len: int = 1600) -> None:
    """A tiny stand-in for the tool's output: 30x30 grids, tokens 0..9, every puzzle id 0, a wrong seq_len claim."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    vehicles = ["easy", "normal", "hard", "expert"]
    for split, bases in (("train", 2), ("test", 1)):
        n = 4 * bases
        grids = rng.integers(1, 7, size=(bases, 900))
        inputs = np.repeat(grids, 4, axis=0)
        inputs[:, 0], inputs[:, 899] = 7, 8
        labels = inputs.copy()
        labels[:, 1:30] = 9
        files = spec.raw_split_files(split)
        documents = {
            "dataset": {
                "seq_len": claimed_seq_len,
                "vocab_size": 10,
                "pad_id": 0,
                "ignore_label_id": 0,
                "blank_identifier_id": 0,
                "num_puzzle_identifiers": 1,
                "total_groups": bases,
                "mean_puzzle_examples": 4.0,
                "sets": ["all"],
            },
            "inputs": inputs.tolist(),
            "labels": labels.tolist(),
            "puzzle_identifiers": [0] * n,
            "puzzle_indices": list(range(n + 1)),
            "group_indices": list(range(0, n + 1, 4)),
            "base_scenario_ids": [f"{split}_base_{b}" for b in range(bases) for _ in range(4)],
            "vehicle_types": vehicles * bases,
        }
        for kind, name in files.items():
            (folder / name).write_text(json.dumps(documents[kind], indent=2))
    (folder / spec.RAW_IDENTIFIERS_FILE).write_text(json.dumps(["<blank>"]))
    (folder / spec.RAW_SUMMARY_FILE).write_text(json.dumps({"total_examples": 12, "grid": "30x30"}))


def test_original_tool_files_convert_with_their_real_seq_len(tmp_path):
    make_original_tool_set(tmp_path / "orig")
    report = convert.convert(tmp_path / "orig", tmp_path / "hrm", strict=False)
    assert report["source"] == raw.SOURCE_ORIGINAL
    assert any("'seq_len' claims 1600 but the files hold 900" in issue for issue in report["issues"])
    assert any("every puzzle identifier is 0" in issue for issue in report["issues"])
    for split, n in (("train", 8), ("test", 4)):
        metadata, arrays = load_like_hrm(tmp_path / "hrm", split)
        assert metadata["seq_len"] == 900 and metadata["vocab_size"] == 10
        assert metadata["num_puzzle_identifiers"] == 1 and metadata["mean_puzzle_examples"] == 1.0
        assert arrays["inputs"].shape == (n, 900) and arrays["inputs"].dtype == np.uint8
        assert int(arrays["inputs"].max()) < metadata["vocab_size"]
        assert int(arrays["puzzle_identifiers"].max()) < metadata["num_puzzle_identifiers"]
        assert arrays["vehicle_types"].tolist()[:4] == [1, 2, 3, 4]  # easy..expert = bike..truck
    assert not (tmp_path / "hrm" / spec.HRM_ROUTING_FILE).exists()  # no cost model to write


def test_original_tool_files_are_refused_in_strict_mode(tmp_path):
    make_original_tool_set(tmp_path / "orig")
    with pytest.raises(UserError, match=r"strict.*\n.*'seq_len' claims 1600 but the files hold 900") as err:
        convert.convert(tmp_path / "orig", tmp_path / "hrm", strict=True)
    assert "--no-strict" in str(err.value)
    assert not (tmp_path / "hrm").exists()


def test_original_tool_token_outside_its_vocabulary_is_refused(tmp_path):
    make_original_tool_set(tmp_path / "orig")
    path = tmp_path / "orig" / spec.raw_split_files("test")["inputs"]
    grids = read_json(path)
    grids[2][5] = 12
    path.write_text(json.dumps(grids))
    with pytest.raises(
        UserError, match=r"test_all__inputs.json: field 'inputs' index 2, position 5: token 12"
    ):
        convert.convert(tmp_path / "orig", tmp_path / "hrm", strict=False)


# ---- broken file sets through the stage script ----
def _stage_app():
    spec_ = importlib.util.spec_from_file_location(
        "stage_convert", Path(__file__).parents[1] / "stages" / "convert.py"
    )
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module.app


def _edit(folder: Path, name: str, change) -> None:
    path = folder / name
    path.write_text(json.dumps(change(read_json(path))))


def _set(value_path, value):
    def change(doc):
        target = doc
        for key in value_path[:-1]:
            target = target[key]
        target[value_path[-1]] = value
        return doc

    return change


TRAIN = spec.raw_split_files("train")
TEST = spec.raw_split_files("test")
CORRUPTIONS = {
    "missing_file": (
        lambda f: (f / TRAIN["labels"]).unlink(),
        r"1 of the 18 raw files missing: city_routing_paper_train_all__labels\.json",
    ),
    "truncated_json": (
        lambda f: (f / TEST["inputs"]).write_text((f / TEST["inputs"]).read_text()[:500]),
        r"test_all__inputs\.json: truncated JSON \(.* at line 1",
    ),
    "wrong_type_in_index_array": (
        lambda f: _edit(f, TRAIN["puzzle_identifiers"], _set([3], "4")),
        r"train_all__puzzle_identifiers\.json: field 'puzzle_identifiers' index 3: expected an integer, got str",
    ),
    "wrong_type_in_grid": (
        lambda f: _edit(f, TRAIN["labels"], _set([5, 17], 2.5)),
        r"train_all__labels\.json: field 'labels' index 5, position 17: expected an integer token, got float",
    ),
    "bool_in_grid": (
        lambda f: _edit(f, TRAIN["inputs"], _set([1, 3], True)),
        r"train_all__inputs\.json: field 'inputs' index 1, position 3: expected an integer token, got bool",
    ),
    "wrong_type_metadata": (
        lambda f: _edit(f, TRAIN["dataset"], _set(["seq_len"], "144")),
        r"train_dataset\.json: field 'seq_len' has the wrong type str",
    ),
    "ragged_rows": (
        lambda f: _edit(f, TEST["labels"], lambda d: [d[0], d[1][:-1], *d[2:]]),
        r"test_all__labels\.json: field 'labels' index 1: has 143 tokens but index 0 has 144",
    ),
    "labels_fewer_than_inputs": (
        lambda f: _edit(f, TRAIN["labels"], lambda d: d[:-1]),
        r"train_all__labels\.json: field 'labels' has shape \[11, 144\] but .*inputs\.json has \[12, 144\]",
    ),
    "vehicle_types_too_short": (
        lambda f: _edit(f, TEST["vehicle_types"], lambda d: d[:-2]),
        r"test_all__vehicle_types\.json: field 'vehicle_types' has 6 entries but there are 8 examples",
    ),
    "out_of_range_token": (
        lambda f: _edit(f, TRAIN["inputs"], _set([4, 10], 99)),
        r"train_all__inputs\.json: field 'inputs' index 4, position 10: token 99 is not allowed",
    ),
    "route_token_in_input": (
        lambda f: _edit(f, TEST["inputs"], _set([0, 0], spec.ROUTE)),
        r"test_all__inputs\.json: field 'inputs' index 0, position 0: token 23 is not allowed",
    ),
    "non_monotone_puzzle_indices": (
        lambda f: _edit(f, TRAIN["puzzle_indices"], lambda d: [*d[:3], d[4], d[3], *d[5:]]),
        r"train_all__puzzle_indices\.json: field 'puzzle_indices' index 4: 3 after 4, indices must rise strictly",
    ),
    "group_indices_wrong_end": (
        lambda f: _edit(f, TEST["group_indices"], lambda d: [*d[:-1], d[-1] - 1]),
        r"test_all__group_indices\.json: field 'group_indices' index 2: ends at 7 but the number of puzzles is 8",
    ),
    "group_indices_not_from_zero": (
        lambda f: _edit(f, TEST["group_indices"], lambda d: [1, *d[1:]]),
        r"test_all__group_indices\.json: field 'group_indices' index 0: must be 0, is 1",
    ),
    "puzzle_identifier_out_of_range": (
        lambda f: _edit(f, TRAIN["puzzle_identifiers"], _set([2], 7)),
        r"train_all__puzzle_identifiers\.json: field 'puzzle_identifiers' index 2: 7 is not an id",
    ),
    "seq_len_not_rows_times_cols": (
        lambda f: _edit(f, spec.RAW_SUMMARY_FILE, _set(["grid", "rows"], 13)),
        r"dataset_summary\.json: field 'grid': rows x cols = 156 but the grids hold 144 tokens",
    ),
    "metadata_claims_wrong_seq_len": (
        lambda f: _edit(f, TEST["dataset"], _set(["seq_len"], 1600)),
        r"test_dataset\.json: field 'seq_len' is 1600, the files say 144",
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_broken_file_set_is_refused_with_its_own_message(name, raw_copy, tmp_path):
    corrupt, message = CORRUPTIONS[name]
    corrupt(raw_copy)
    out = tmp_path / "hrm"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    params = write_params_file(
        tmp_path / "params.yaml",
        {"paths": {"raw": str(raw_copy), "hrm": str(out)}, "convert": {"strict": True}},
    )
    result = CliRunner().invoke(_stage_app(), ["--params", str(params)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    assert len(re.findall(message, result.stderr)) == 1, result.stderr
    others = [m for other, (_, m) in CORRUPTIONS.items() if other != name]
    assert not [m for m in others if re.search(m, result.stderr)], result.stderr  # its own message
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # existing output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hrm",
        "params.yaml",
        "raw",
    ]  # no staging left behind


def test_stage_converts_and_no_strict_flag_overrides_params(tmp_path):
    make_original_tool_set(tmp_path / "orig")
    out = tmp_path / "hrm"
    params = write_params_file(
        tmp_path / "params.yaml",
        {"paths": {"raw": str(tmp_path / "orig"), "hrm": str(out)}, "convert": {"strict": True}},
    )
    refused = CliRunner().invoke(_stage_app(), ["--params", str(params)])
    assert refused.exit_code == 1 and "claims 1600" in refused.stderr and not out.exists()
    converted = CliRunner().invoke(_stage_app(), ["--params", str(params), "--no-strict"])
    assert converted.exit_code == 0, converted.output
    assert "warning:" in converted.stderr and "seq_len 900, vocab 10" in converted.stdout
    assert read_json(out / "train" / "dataset.json")["seq_len"] == 900


def test_metadata_for_settings_is_what_convert_writes(generated, tmp_path):
    """The doctor's plan and the budget curves' FLOPs use the metadata convert would write, before converting."""
    convert.convert(generated, tmp_path / "hrm")
    written = json.loads((tmp_path / "hrm" / "train" / "dataset.json").read_text(encoding="utf-8"))
    expected = convert.metadata_for_settings(small_params()["generate"])
    assert {k: written[k] for k in HRM_METADATA_FIELDS} == expected
