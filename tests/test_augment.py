"""Dihedral augmentation (convert.augment): the 8 symmetries, the augmented HRM layout with every transformed
route re-checked, validate on augmented sets (counts, leakage under every transform), and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hrm.config import ConfigError
from hrm.data import routing, spec
from hrm.data.conversion import augment, convert
from hrm.data.generation import generate
from hrm.data.validation import validate
from hrm.io import UserError
from tests.test_generate import small_params as generate_params
from tests.validate_data import load_docs, make_valid_set, small_params, write_docs, write_params

TRANSFORM_IDS = list(range(len(augment.TRANSFORMS)))


# ---- the 8 symmetries -----------------------------------------------------------------------------------


def cell_map(rows: int, cols: int, transform: int) -> np.ndarray:
    """Where each cell goes: new index of old cell k (the transform applied to the grid of cell ids)."""
    ids = np.arange(rows * cols)[None, :]
    moved = augment.transform_grids(ids, rows, cols, transform)[0]
    where = np.empty(rows * cols, dtype=np.int64)
    where[moved] = np.arange(rows * cols)
    return where


def test_eight_distinct_symmetries_with_the_documented_convention():
    grid = np.arange(9).reshape(1, 9)  # 0 1 2 / 3 4 5 / 6 7 8
    out = {augment.TRANSFORMS[t]: augment.transform_grids(grid, 3, 3, t)[0].tolist() for t in TRANSFORM_IDS}
    assert out == {
        "identity": [0, 1, 2, 3, 4, 5, 6, 7, 8],
        "rot90": [2, 5, 8, 1, 4, 7, 0, 3, 6],  # counter-clockwise
        "rot180": [8, 7, 6, 5, 4, 3, 2, 1, 0],
        "rot270": [6, 3, 0, 7, 4, 1, 8, 5, 2],
        "flip_left_right": [2, 1, 0, 5, 4, 3, 8, 7, 6],
        "flip_up_down": [6, 7, 8, 3, 4, 5, 0, 1, 2],
        "transpose": [0, 3, 6, 1, 4, 7, 2, 5, 8],
        "anti_transpose": [8, 5, 2, 7, 4, 1, 6, 3, 0],
    }


@pytest.mark.parametrize("transform", TRANSFORM_IDS)
def test_each_symmetry_maps_4_neighbours_onto_4_neighbours(transform):
    rows = cols = 5
    where = cell_map(rows, cols, transform)
    adjacent = routing.neighbours(rows, cols)
    for cell in range(rows * cols):
        assert {int(where[n]) for n in adjacent[cell]} == set(adjacent[int(where[cell])])


def test_non_square_maps_are_refused_naming_the_key_and_the_reflections_that_apply():
    with pytest.raises(ConfigError) as error:
        augment.transforms_for("dihedral", 8, 10)
    message = str(error.value)
    assert "convert.augment" in message and "8 x 10" in message
    assert "identity, rot180, flip_left_right, flip_up_down keep the shape" in message
    assert augment.transforms_for("none", 8, 10) == (0,)
    grid = np.arange(80).reshape(1, 80)
    for t in augment.SHAPE_KEEPING:
        assert augment.transform_grids(grid, 8, 10, t).shape == (1, 80)
    with pytest.raises(ValueError, match="rot90 needs a square map"):
        augment.transform_grids(grid, 8, 10, 1)


@pytest.mark.parametrize("value", ["yes", "Dihedral", True, 8, None])
def test_unknown_augment_value_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"convert\.augment must be one of none, dihedral"):
        augment.parse(value)


# ---- convert ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw") / "raw"
    generate.generate(generate_params(), folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def layouts(generated, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hrm")
    convert.convert(generated, root / "plain", augment="none")
    report = convert.convert(generated, root / "dihedral", augment="dihedral")
    assert report["augment"] == "dihedral"
    return root / "plain", root / "dihedral"


def arrays(root: Path, split: str) -> dict[str, np.ndarray]:
    names = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
    names += spec.HRM_EXTRA_ARRAYS
    return {name: np.load(root / split / f"all__{name}.npy") for name in names}


def test_augmented_layout_groups_bases_keeps_vehicles_and_leaves_test_alone(layouts):
    plain_root, aug_root = layouts
    plain, aug = arrays(plain_root, "train"), arrays(aug_root, "train")
    n, groups = len(plain["inputs"]), len(plain["group_indices"]) - 1
    assert len(aug["inputs"]) == 8 * n and len(aug["puzzle_identifiers"]) == 8 * n
    assert aug["group_indices"].tolist() == (8 * plain["group_indices"]).tolist()
    for name, array in aug.items():
        assert array.dtype == plain[name].dtype, name
    for g in range(groups):
        rows = slice(8 * plain["group_indices"][g], 8 * plain["group_indices"][g + 1])
        own = slice(plain["group_indices"][g], plain["group_indices"][g + 1])
        assert set(aug["base_scenario_ids"][rows].tolist()) == set(plain["base_scenario_ids"][own].tolist())
        # transform-major: the group's vehicles once per symmetry, in the original order
        assert aug["vehicle_types"][rows].tolist() == plain["vehicle_types"][own].tolist() * 8
        assert aug["puzzle_identifiers"][rows].tolist() == aug["vehicle_types"][rows].tolist()
    meta = json.loads((aug_root / "train" / "dataset.json").read_text())
    plain_meta = json.loads((plain_root / "train" / "dataset.json").read_text())
    assert meta == dict(plain_meta, augment="dihedral")  # HRM's numbers unchanged: same groups, 1 per puzzle
    for name in ("dataset.json", *(f"all__{k}.npy" for k in arrays(plain_root, "test"))):
        assert (aug_root / "test" / name).read_bytes() == (plain_root / "test" / name).read_bytes()


@pytest.mark.parametrize("transform", TRANSFORM_IDS)
def test_each_transform_gives_the_transformed_map_and_its_unique_optimal_route(layouts, generated, transform):
    plain_root, aug_root = layouts
    plain, aug = arrays(plain_root, "train"), arrays(aug_root, "train")
    summary = json.loads((generated / spec.RAW_SUMMARY_FILE).read_text())
    table = np.asarray(summary["cost_model"]["cost_table"], dtype=np.int64)
    rows = cols = summary["grid"]["rows"]
    sizes = np.diff(plain["group_indices"])
    checked = 0
    for g, size in enumerate(sizes.tolist()):
        start = 8 * int(plain["group_indices"][g]) + transform * size
        for k in range(size):
            source, row = int(plain["group_indices"][g]) + k, start + k
            for name in ("inputs", "labels"):
                expected = augment.transform_grids(plain[name][source][None], rows, cols, transform)[0]
                assert np.array_equal(aug[name][row], expected)
            cost_row = table[int(aug["vehicle_types"][row])]
            check = routing.check_route(aug["inputs"][row], aug["labels"][row], cost_row, rows, cols)
            assert check.valid, check.reason
            inputs = aug["inputs"][row].astype(np.int64)
            start_cell = int(np.flatnonzero(inputs == spec.START)[0])
            goal_cell = int(np.flatnonzero(inputs == spec.GOAL)[0])
            optimum, on_optimal = routing.dijkstra_optimum(
                cost_row[inputs], start_cell, goal_cell, rows, cols
            )
            assert check.cost == optimum
            mask = np.zeros(rows * cols, dtype=bool)
            mask[list(check.path)] = True
            assert np.array_equal(on_optimal, mask)  # the only optimal route
            checked += 1
    assert checked == len(plain["inputs"])


def test_a_transform_that_breaks_routes_is_caught_before_anything_is_written(
    generated, tmp_path, monkeypatch
):
    """The re-check is real: a 'symmetry' that moves the labels but not the maps must be refused."""
    true_transform = augment.transform_grids

    def broken(grids, rows, cols, transform):
        is_label = bool((np.asarray(grids) == spec.ROUTE).any())
        return true_transform(grids, rows, cols, 5 if is_label and transform == 4 else transform)

    monkeypatch.setattr(augment, "transform_grids", broken)
    out = tmp_path / "hrm"
    with pytest.raises(
        UserError, match=r"transformed train example\(s\) .* not the unique optimal route"
    ) as err:
        convert.convert(generated, out, augment="dihedral")
    assert "flip_left_right" in str(err.value) and "Nothing was written" in str(err.value)
    assert not out.exists()


def test_convert_stage_refuses_bad_augment_settings(generated, tmp_path):
    params = small_params(tmp_path)
    params["paths"]["raw"] = str(generated)
    params["convert"]["augment"] = "yes"
    with pytest.raises(UserError) as error:
        convert.run(write_params(tmp_path, params))
    assert "convert.augment" in str(error.value) and "'yes'" in str(error.value)
    assert not (tmp_path / "hrm").exists()


def test_convert_refuses_dihedral_on_a_non_square_map(tmp_path):
    folder = tmp_path / "raw"
    generate.generate(generate_params(rows=12, cols=14), folder, progress=False)
    with pytest.raises(ConfigError, match=r"convert\.augment: dihedral needs square maps, these are 12 x 14"):
        convert.convert(folder, tmp_path / "hrm", augment="dihedral")
    assert not (tmp_path / "hrm").exists()


# ---- validate ---------------------------------------------------------------------------------------------


def augmented_params(root: Path) -> dict:
    params = small_params(root)
    params["convert"]["augment"] = "dihedral"
    return params


@pytest.fixture(scope="module")
def augmented_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("augmented")
    make_valid_set(root)
    convert.convert(root / "raw", root / "hrm", augment="dihedral")
    write_params(root, augmented_params(root))
    return root


@pytest.fixture
def augmented_copy(augmented_set, tmp_path) -> Path:
    shutil.copytree(augmented_set / "raw", tmp_path / "raw")
    shutil.copytree(augmented_set / "hrm", tmp_path / "hrm")
    write_params(tmp_path, augmented_params(tmp_path))
    return tmp_path


def test_augmented_set_passes_validate_with_8x_counts(augmented_copy):
    report = validate.run(augmented_copy / "params.yaml").report
    assert report.passed and report.score == 1.0
    checks = {check.name: check for check in report.checks}
    assert checks["augmented_routes"].passed and checks["augmented_routes"].value == 1.0
    assert checks["hrm_layout_agrees"].passed and checks["hrm_layout_augment"].passed
    assert "under any of its 8 trained symmetries" in checks["identical_grids_across_splits"].description
    assert report.figures["train_examples"] == 24  # the raw files; the layout holds 8 x 24
    assert report.figures["train_examples_augmented"] == 8 * 24
    assert len(np.load(augmented_copy / "hrm" / "train" / "all__inputs.npy")) == 8 * 24


def test_validate_catches_a_layout_not_augmented_as_params_say(augmented_copy):
    convert.convert(augmented_copy / "raw", augmented_copy / "hrm", augment="none")
    with pytest.raises(UserError) as error:
        validate.run(augmented_copy / "params.yaml")
    message = str(error.value)
    assert "consistency.hrm_layout_augment" in message and "consistency.hrm_layout_agrees" in message
    assert "augment = 'none' but params.yaml convert.augment is 'dihedral'" in message


def plant_rotated_train_base_in_test(raw_dir: Path, transform: int) -> None:
    """Test base 0 (its 4 examples) becomes train base 0 under `transform`, every file kept consistent."""
    docs = load_docs(raw_dir)
    summary = docs[spec.RAW_SUMMARY_FILE]
    rows, cols = summary["grid"]["rows"], summary["grid"]["cols"]
    train, test = spec.raw_split_files("train"), spec.raw_split_files("test")
    for k in range(4):
        assert docs[test["vehicle_types"]][k] == docs[train["vehicle_types"]][k]
        for kind in ("inputs", "labels"):
            grid = np.asarray(docs[train[kind]][k])[None]
            docs[test[kind]][k] = augment.transform_grids(grid, rows, cols, transform)[0].tolist()
        record = dict(summary["examples"]["train"][k], base_scenario_id=docs[test["base_scenario_ids"]][k])
        summary["examples"]["test"][k] = record
    grid = np.asarray(docs[test["inputs"]][0])
    base = summary["bases"]["test"][0]
    base["start"] = int(np.flatnonzero(grid == spec.START)[0])
    base["goal"] = int(np.flatnonzero(grid == spec.GOAL)[0])
    write_docs(raw_dir, docs)


def test_a_test_map_equal_to_a_transformed_train_map_is_a_critical_leak(augmented_copy):
    plant_rotated_train_base_in_test(augmented_copy / "raw", transform=1)
    convert.convert(augmented_copy / "raw", augmented_copy / "hrm", augment="dihedral")
    with pytest.raises(UserError) as error:
        validate.run(augmented_copy / "params.yaml")
    message = str(error.value)
    assert "1 critical check(s) failed" in message
    assert "methodology.identical_grids_across_splits" in message
    assert (
        "city_routing_paper_test_all__inputs.json[0] (base test-0000) is identical to "
        "city_routing_paper_train_all__inputs.json[0] (base train-0000) under rot90" in message
    )
    # without augmentation the model never sees the rotated map: the planted set is clean
    params = small_params(augmented_copy)
    params["convert"]["augment"] = "none"
    convert.convert(augmented_copy / "raw", augmented_copy / "hrm", augment="none")
    assert validate.run(write_params(augmented_copy, params)).report.passed
