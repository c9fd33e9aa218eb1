"""Audit mode: a foreign 18-file set, built as the first attempt's original
browser tool wrote them (10-token vocabulary, 30x30 maps, vehicles easy/normal/hard/expert, no cost model), with each of
that tool's flaws planted alone. validate writes compliance.json/.md for it, names each flaw with counts and
examples, lists the checks it cannot run, exits 1 without a traceback, and leaves the data untouched."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hrm.data import spec
from hrm.data.validation import validate
from hrm.io import UserError
from tests.conftest import write_params_file

SIDE = 30  # the tool's maps (its flaw 6: metadata claiming 40x40)
VEHICLES = ["easy", "normal", "hard", "expert"]  # = bike, car, van, truck
BASES = {"train": 3, "test": 2}
START, END, ROUTE = 7, 8, 9  # the tool's tokens


def clean_foreign_set() -> dict[str, object]:
    """The tool's format without its flaws: one distinct map per base, a different route per vehicle,
    puzzle identifiers 1..4, counts that agree everywhere."""
    rng = np.random.default_rng(7)
    docs: dict[str, object] = {}
    for split, bases in BASES.items():
        inputs, labels = [], []
        for _ in range(bases):
            grid = rng.integers(1, 7, size=SIDE * SIDE)
            grid[0], grid[-1] = START, END
            for k in range(len(VEHICLES)):
                label = grid.copy()
                label[SIDE * (k + 1) + 1 : SIDE * (k + 1) + 20] = ROUTE  # each vehicle its own route
                inputs.append(grid.tolist())
                labels.append(label.tolist())
        n = bases * len(VEHICLES)
        files = spec.raw_split_files(split)
        docs[files["dataset"]] = {
            "seq_len": SIDE * SIDE,
            "vocab_size": 10,
            "pad_id": 0,
            "ignore_label_id": 0,
            "blank_identifier_id": 0,
            "num_puzzle_identifiers": 5,
            "total_groups": bases,
            "mean_puzzle_examples": 1.0,
            "sets": ["all"],
        }
        docs[files["inputs"]] = inputs
        docs[files["labels"]] = labels
        docs[files["puzzle_identifiers"]] = [k + 1 for _ in range(bases) for k in range(len(VEHICLES))]
        docs[files["puzzle_indices"]] = list(range(n + 1))
        docs[files["group_indices"]] = list(range(0, n + 1, len(VEHICLES)))
        docs[files["base_scenario_ids"]] = [f"{split}-{b:04d}" for b in range(bases) for _ in VEHICLES]
        docs[files["vehicle_types"]] = VEHICLES * bases
    docs[spec.RAW_IDENTIFIERS_FILE] = ["<blank>", *VEHICLES]
    docs[spec.RAW_SUMMARY_FILE] = {
        "train_examples": 12,
        "test_examples": 8,
        "train_bases": 3,
        "test_bases": 2,
        "grid": "30x30",
    }
    return docs


TRAIN, TEST = spec.raw_split_files("train"), spec.raw_split_files("test")


def _all_pids_zero(docs):
    for files in (TRAIN, TEST):
        docs[files["puzzle_identifiers"]] = [0] * len(docs[files["puzzle_identifiers"]])


def _one_layout(docs):
    first = docs[TRAIN["inputs"]][0]
    for files in (TRAIN, TEST):
        for i, label in enumerate(docs[files["labels"]]):
            docs[files["labels"]][i] = [ROUTE if t == ROUTE else first[c] for c, t in enumerate(label)]
            docs[files["inputs"]][i] = list(first)


def _bike_equals_car(docs):
    for files in (TRAIN, TEST):
        labels = docs[files["labels"]]
        for base in range(0, len(labels), 4):
            labels[base + 1] = list(labels[base])


def _near_identical(docs):
    grids = docs[TRAIN["inputs"]]
    near = list(grids[0])
    near[100:110] = [1 if t != 1 else 2 for t in near[100:110]]
    for k in range(4, 8):
        label = docs[TRAIN["labels"]][k]
        docs[TRAIN["labels"]][k] = [ROUTE if t == ROUTE else near[c] for c, t in enumerate(label)]
        grids[k] = list(near)


def _ignore_label(docs):
    for i, label in enumerate(docs[TRAIN["labels"]]):
        docs[TRAIN["labels"]][i] = [ROUTE if t == ROUTE else 0 for t in label]


# flaw -> (planting, the check that must find it, text its finding must hold; params overrides)
FLAWS: dict[str, tuple[Callable[[dict], None], str, str, dict]] = {
    "summary promises more than the files hold (flaw 5)": (
        lambda d: d[spec.RAW_SUMMARY_FILE].update(train_examples=16, train_bases=4),
        "summary_claims",
        "claims 16 train examples, the files hold 12",
        {},
    ),
    "params expect more bases than generated (flaw 5)": (
        lambda d: None,
        "train_examples",
        "found 12, expected 16",
        {"generate": {"train_bases": 4}},
    ),
    "blank vehicle identifiers": (
        lambda d: d[TRAIN["vehicle_types"]].__setitem__(slice(4, 6), ["", " "]),
        "identifiers_present",
        f"{TRAIN['vehicle_types']}: 2 blank or missing entries, e.g. indices 4, 5",
        {},
    ),
    "vehicle never given to the model (flaw 2)": (
        _all_pids_zero,
        "identifiers_present",
        "12 examples have puzzle identifier 0 (blank): the model is never told the vehicle",
        {},
    ),
    "same input, different labels (flaw 2)": (
        _all_pids_zero,
        "conflicting_labels",
        "one input with puzzle identifier 0 carries 4 different labels",
        {},
    ),
    "one street layout for every example": (
        _one_layout,
        "identical_maps",
        "pairs of base maps identical within train",
        {},
    ),
    "near-identical maps": (_near_identical, "near_identical_maps", "near-identical within train", {}),
    "bike and car labels identical (flaw 2)": (
        _bike_equals_car,
        "vehicle_labels_distinct",
        "vehicles 'easy' and 'normal' have identical labels in all 5 bases they share",
        {},
    ),
    "seq_len claims 40x40 for 30x30 maps (flaw 6)": (
        lambda d: d[TEST["dataset"]].update(seq_len=1600),
        "hrm_metadata",
        f"{TEST['dataset']}: seq_len = 1600, the files: 900",
        {},
    ),
    "labels 0 off the route (flaw 1)": (
        _ignore_label,
        "labels_cover_every_cell",
        f"{TRAIN['labels']}: 12 labels hold",
        {},
    ),
}


@pytest.fixture(scope="module")
def clean_docs():
    return clean_foreign_set()


def _write_set(root: Path, docs: dict, overrides: dict) -> Path:
    raw = root / "raw"
    raw.mkdir()
    for name, document in docs.items():
        (raw / name).write_text(json.dumps(document), encoding="utf-8")
    settings = {
        "paths": {"raw": str(raw), "hrm": str(root / "hrm"), "data_reports": str(root / "reports")},
        "generate": {"train_bases": BASES["train"], "test_bases": BASES["test"]},
    }
    for section, values in overrides.items():
        settings.setdefault(section, {}).update(values)
    return write_params_file(root / "params.yaml", settings)


def _audit(root: Path, docs: dict, overrides: dict) -> tuple[str, dict, str]:
    params = _write_set(root, docs, overrides)
    with pytest.raises(UserError) as error:
        validate.run(params)
    reports = root / "reports"
    return (
        str(error.value),
        json.loads((reports / "compliance.json").read_text()),
        (reports / "compliance.md").read_text(),
    )


def _check_lines(markdown: str, name: str) -> str:
    """The report's section for one check: its table row and its findings."""
    lines = [line for line in markdown.splitlines() if f"| {name} |" in line or f".{name}: " in line]
    section = markdown.split(f".{name} (", 1)
    return "\n".join(lines) + ("\n" + section[1].split("###", 1)[0] if len(section) > 1 else "")


def test_clean_foreign_set_is_audited_not_refused(clean_docs, tmp_path):
    """No planted flaw: the audit's own checks pass; the file layer fails (not our format) and the checks
    that need a cost model are listed as not run, so the set still fails, with every reason in the report."""
    message, metrics, markdown = _audit(tmp_path, clean_docs, {})
    assert metrics["passed"] is False and (tmp_path / "reports" / "compliance.md").exists()
    checks = metrics["checks"]
    for category, name in [
        ("methodology", "summary_claims"),
        ("methodology", "identifiers_present"),
        ("tokens", "conflicting_labels"),
        ("augmentation_quality", "identical_maps"),
        ("augmentation_quality", "vehicle_labels_distinct"),
        ("tokens", "hrm_metadata"),
        ("tokens", "labels_cover_every_cell"),
    ]:
        assert checks[f"{category}.{name}"] == 1.0, name
    # each planted flaw's finding comes from its flaw: the clean set shows none of them
    assert not [text for _, check, text, _ in FLAWS.values() if text in _check_lines(markdown, check)]
    assert checks["methodology.train_examples"] == 12 and checks["methodology.test_bases"] == 2  # = params
    assert checks["consistency.near_identical_maps"] == 1.0
    assert checks["methodology.file_schemas"] < 1.0  # not our files: the schemas say where they differ
    assert {"route_optimality.route_valid", "route_optimality.route_optimal"} <= set(metrics["not_run"])
    assert "no cost model" in _check_lines(markdown, "route_valid") and "## Not run" in markdown
    assert "not run (score 0)" in message
    assert metrics["categories"]["route_optimality"] == 0.0
    assert set(metrics["categories"]) == {"methodology", "tokens", "route_optimality", "augmentation_quality"}


@pytest.mark.parametrize("flaw", list(FLAWS))
def test_each_planted_flaw_is_found(flaw, clean_docs, tmp_path):
    plant, check, text, overrides = FLAWS[flaw]
    docs = copy.deepcopy(clean_docs)
    plant(docs)
    before = (
        {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
        if (tmp_path / "raw").exists()
        else None
    )
    message, metrics, markdown = _audit(tmp_path, docs, overrides)
    assert before is None
    found = [key for key in metrics["checks"] if key.endswith(f".{check}")]
    row = next(line for line in markdown.splitlines() if f"| {check} |" in line)
    assert found and "**FAIL**" in row, (flaw, row)
    assert text in _check_lines(markdown, check), _check_lines(markdown, check)
    critical = not found[0].startswith("consistency.")
    assert (text in message) == critical  # the exit message names every critical finding
    # the data are read, never written: the raw files are the planted ones, byte for byte
    for name, document in docs.items():
        assert (tmp_path / "raw" / name).read_text(encoding="utf-8") == json.dumps(document)


def test_stage_exits_1_with_the_findings_and_replaces_reports_whole(clean_docs, tmp_path):
    docs = copy.deepcopy(clean_docs)
    _bike_equals_car(docs)
    params = _write_set(tmp_path, docs, {})
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "scenarios.png").write_bytes(b"a figure of another data set")
    from stages.validate import app

    result = CliRunner().invoke(app, ["--params", str(params)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "vehicles 'easy' and 'normal' have identical labels" in result.output
    assert sorted(p.name for p in reports.iterdir()) == ["compliance.json", "compliance.md", "score.json"]


def test_a_stray_non_integer_token_does_not_hide_its_grids_from_the_audit(clean_docs, tmp_path):
    """file_schemas names a bool and a float token; the audit still reads those grids (raw.int_matrix with
    coerce, as numpy reads the tokens), so the checks of both splits still run on every example."""
    docs = copy.deepcopy(clean_docs)
    docs[TRAIN["inputs"]][3][4] = True
    docs[TEST["labels"]][1][4] = 2.0
    _, metrics, markdown = _audit(tmp_path, docs, {})
    assert f"{TRAIN['inputs']}: $[3][4]: True is not of type 'integer'" in _check_lines(
        markdown, "file_schemas"
    )
    assert metrics["checks"]["methodology.train_examples"] == 12
    assert metrics["checks"]["methodology.test_examples"] == 8
    assert metrics["checks"]["augmentation_quality.vehicle_labels_distinct"] == 1.0
    assert not {"methodology.train_examples", "methodology.base_overlap"} & set(metrics["not_run"])


def test_grids_the_converter_refuses_are_not_run_with_its_reason(clean_docs, tmp_path):
    docs = copy.deepcopy(clean_docs)
    docs[TRAIN["inputs"]][3].pop()
    _, metrics, markdown = _audit(tmp_path, docs, {})
    assert "methodology.train_examples" in metrics["not_run"]
    assert "methodology.test_examples" not in metrics["not_run"]
    assert f"{TRAIN['inputs']}: field 'inputs' index 3: has 899 tokens but index 0 has 900" in _check_lines(
        markdown, "train_examples"
    )


@pytest.fixture(scope="module")
def our_set(tmp_path_factory):
    from tests.validate_data import make_valid_set

    root = tmp_path_factory.mktemp("ours")
    make_valid_set(root)
    return root


def test_routes_are_still_checked_when_a_structure_layer_fails(our_set, tmp_path):
    """Our files with a broken index file and, on top, a dearer route and a broken one: the structure finding
    is reported and the cost model still re-checks every route."""
    from tests.test_bad_input_validate import _disconnect_route, _non_optimal_route
    from tests.validate_data import copy_set, load_docs, write_docs

    params = copy_set(our_set, tmp_path)
    docs = load_docs(tmp_path / "raw")
    docs[TEST["group_indices"]][-1] -= 1  # cross-file invariant broken: the full checks cannot run
    _disconnect_route(docs)
    _non_optimal_route(docs)
    write_docs(tmp_path / "raw", docs)
    with pytest.raises(UserError) as error:
        validate.run(params)
    markdown = (tmp_path / "reports" / "compliance.md").read_text()
    assert "field 'group_indices' index 3: ends at 11 but the number of puzzles is 12" in _check_lines(
        markdown, "structure"
    )
    assert f"{TRAIN['labels']}[5] (base train-0001, car): invalid route" in _check_lines(
        markdown, "route_valid"
    )
    assert "but the optimum is" in _check_lines(markdown, "route_optimal")
    assert "route_valid" not in json.loads((tmp_path / "reports" / "compliance.json").read_text())["not_run"]
    assert "invalid route" in str(error.value)


def test_convert_and_validate_read_the_files_through_one_reader(our_set, tmp_path, monkeypatch):
    """Both stages get the 18 files from hrm.data.conversion.raw.read_files, once each; nothing else opens them."""
    from hrm.data.conversion import convert, raw
    from tests.validate_data import copy_set

    params = copy_set(our_set, tmp_path)
    calls = []
    real = raw.read_files
    monkeypatch.setattr(raw, "read_files", lambda folder: calls.append(Path(folder)) or real(folder))
    opened = []
    real_read = raw.read_json_text
    monkeypatch.setattr(raw, "read_json_text", lambda path: opened.append(path.name) or real_read(path))
    convert.convert(tmp_path / "raw", tmp_path / "hrm-again")
    validate.run(params)
    assert calls == [tmp_path / "raw", tmp_path / "raw"]
    assert sorted(opened) == sorted(2 * spec.raw_file_names())  # each file read once per stage
