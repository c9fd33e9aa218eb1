"""The 18 raw JSON files as typed arrays: `RawSplit` and `RawDataset`, the one in-memory form convert and validate use.

One reader of the files (`read_files`), then two readings of what they hold:
- convert's (`read_raw`): our generator's files (24-token vocabulary, a summary with the cost model), every
  disagreement fatal; the original browser tool's files (10 tokens, 30x30 grids, metadata that may claim a wrong
  seq_len) are brought in at the edge by `import_original`: fatal only what cannot be converted, the rest
  collected in `RawDataset.issues`. A UserError names file, field and index.
- validate's (`read_checked`): any file set against its JSON Schemas (schemas/) and the structure rules
  (`hrm.data.structure`), every problem collected, into a `Reading` (strict dataset, or lenient splits).
"""

from __future__ import annotations

import json
import math
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache, cached_property
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from hrm.config import SCHEMA_DIR
from hrm.data import spec, structure
from hrm.data.structure import Problem
from hrm.io import SHOWN_CHARS, UserError, parse_json, reading, shorten, shown

SOURCE_GENERATOR = "hrm.data.generate"
SOURCE_ORIGINAL = "original-tool"
# the original tool's tokens: pad obstacle small_road large_road diagonal traffic_jam road_closure start end route
ORIGINAL_VOCAB_SIZE = 10
ORIGINAL_VEHICLES = {"easy": "bike", "normal": "car", "hard": "van", "expert": "truck"}


@dataclass(frozen=True)
class RawSplit:
    """One split's 8 files as arrays: N examples, P puzzles, G groups. Read leniently from broken files (the
    audit), a field is None where its file cannot be used, and `unreadable` says why."""

    name: str  # "train" or "test": its files are spec.raw_split_files(name)
    metadata: dict[str, Any] | None
    inputs: np.ndarray | None  # [N, seq_len] int64
    labels: np.ndarray | None  # [N, seq_len] int64
    puzzle_identifiers: np.ndarray | None  # [P] int64
    puzzle_indices: np.ndarray | None  # [P + 1] int64
    group_indices: np.ndarray | None  # [G + 1] int64
    base_scenario_ids: list[Any] | None  # [N] (str once read strictly)
    vehicle_types: list[Any] | None  # [N]
    unreadable: dict[str, str] = field(default_factory=dict)  # kind -> why it could not be used

    @property
    def num_examples(self) -> int:
        return 0 if self.inputs is None else int(self.inputs.shape[0])

    @property
    def num_puzzles(self) -> int:
        return int(self.puzzle_identifiers.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group_indices.shape[0]) - 1

    @property
    def files(self) -> dict[str, str]:
        """Kind ('dataset', 'inputs', ...) -> file name."""
        return spec.raw_split_files(self.name)

    def where(self, kind: str, index: int | None = None) -> str:
        return self.files[kind] + (f"[{index}]" if index is not None else "")

    def about(self, i: int) -> str:
        """'base b, vehicle v' of example i, as far as known (the audit's messages)."""
        base = self.base_scenario_ids[i] if i < len(self.base_scenario_ids or ()) else "?"
        vehicle = self.vehicle_types[i] if i < len(self.vehicle_types or ()) else "?"
        return f"base {shown(base)}, {shown(vehicle)}"

    @cached_property
    def example_puzzle(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_puzzles), np.diff(self.puzzle_indices))

    @cached_property
    def example_group(self) -> np.ndarray:
        puzzle_group = np.repeat(np.arange(self.num_groups), np.diff(self.group_indices))
        return puzzle_group[self.example_puzzle]

    @cached_property
    def example_identifier(self) -> np.ndarray | None:
        """[N] the puzzle identifier (vehicle id) of each example; None where the files do not tell it."""
        ids, indices, n = self.puzzle_identifiers, self.puzzle_indices, self.num_examples
        if ids is None:
            return None
        if indices is not None and indices.size == ids.size + 1:
            steps = np.diff(indices)
            if indices[0] == 0 and (steps >= 0).all() and indices[-1] == n:
                return np.repeat(ids, steps)
        return ids if ids.size == n else None  # one example per puzzle, as in every producer of these files


@dataclass(frozen=True)
class RawDataset:
    """The 18 files, checked. `seq_len`, `vocab_size`, `rows`, `cols` are what the arrays really hold."""

    folder: Path
    source: str  # SOURCE_GENERATOR or SOURCE_ORIGINAL
    splits: dict[str, RawSplit]
    identifiers: list[str]
    summary: dict[str, Any]
    seq_len: int
    vocab_size: int
    rows: int | None
    cols: int | None
    # None for the original tool and in validate, which re-checks the labels with the summary's own cost table
    cost_model: spec.CostModel | None
    issues: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RawFiles:
    """The 18 files as read: parsed documents and texts by name (those that parse) and every problem."""

    folder: Path
    documents: dict[str, Any]
    texts: dict[str, str]  # lets big token files skip a per-token type scan
    problems: list[str]


def read_files(folder: str | Path) -> RawFiles:
    """The one reader of the 18 files (convert and validate): every file tried, every problem collected."""
    folder = Path(folder)
    if not folder.is_dir():
        return RawFiles(
            folder, {}, {}, [f"{folder}: raw data folder not found (run the generate stage first)"]
        )
    documents: dict[str, Any] = {}
    texts: dict[str, str] = {}
    problems: list[str] = []
    for name in spec.raw_file_names():
        try:
            documents[name], texts[name] = read_json_text(folder / name)
        except UserError as err:
            problems.append(str(err))
    return RawFiles(folder, documents, texts, problems)


def read_json_text(path: Path) -> tuple[Any, str]:
    """Document and text of a JSON file, or a UserError: missing, unreadable, not UTF-8, truncated, not JSON,
    or against `hrm.io.parse_json`'s rules (nesting depth, finite numbers)."""
    with reading(path):
        data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        return parse_json(text, path), text
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        if err.pos >= len(text.rstrip()):
            raise UserError(f"{path}: truncated JSON ({err.msg} at {where}, end of file)") from err
        raise UserError(f"{path}: not valid JSON ({err.msg} at {where})") from err


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _first_non_int(values: list[Any]) -> int | None:
    return next((index for index, value in enumerate(values) if type(value) is not int), None)


def int_vector(path: Path, field_name: str, data: Any) -> np.ndarray:
    """A JSON list of integers as int64; bools, floats, strings and nulls are errors with their index."""
    if not isinstance(data, list):
        raise UserError(f"{path}: field '{field_name}' must be a list of integers, got {_type_name(data)}")
    bad = _first_non_int(data)
    if bad is not None:
        raise UserError(
            f"{path}: field '{field_name}' index {bad}: expected an integer, got {_type_name(data[bad])} {shown(data[bad])}"
        )
    try:
        return np.array(data, dtype=np.int64)
    except OverflowError as err:
        raise UserError(f"{path}: field '{field_name}': integer out of the int64 range") from err


def int_matrix(
    path: Path, field_name: str, data: Any, text: str | None = None, coerce: bool = False
) -> np.ndarray:
    """A JSON list of equally long integer lists as an int64 matrix. Given the file's text without
    true/false/null, numpy's dtype tells fast whether every token is an int. `coerce` (the audit scores what
    broken files hold): any token numpy reads as an integer (bool, float, numeric string) is taken."""
    if not isinstance(data, list) or not data:
        raise UserError(
            f"{path}: field '{field_name}' must be a non-empty list of token lists, got {_type_name(data) if not isinstance(data, list) else 'an empty list'}"
        )
    for index, row in enumerate(data):
        if not isinstance(row, list):
            raise UserError(
                f"{path}: field '{field_name}' index {index}: expected a list of tokens, got {_type_name(row)}"
            )
    width = len(data[0])
    for index, row in enumerate(data):
        if len(row) != width:
            raise UserError(
                f"{path}: field '{field_name}' index {index}: has {len(row)} tokens but index 0 has {width}"
            )
    if coerce:
        try:
            return np.asarray(data, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as err:
            raise UserError(f"{path}: field '{field_name}': a token is not an integer") from err
    if width == 0:
        raise UserError(f"{path}: field '{field_name}': rows are empty")
    if text is not None and not any(word in text for word in ('"', "true", "false", "null")):
        with suppress(ValueError, OverflowError):
            matrix = np.array(data)
            if matrix.dtype.kind == "i":
                return matrix.astype(np.int64, copy=False)
    if set(map(type, chain.from_iterable(data))) != {int}:
        for index, row in enumerate(data):
            bad = _first_non_int(row)
            if bad is not None:
                raise UserError(
                    f"{path}: field '{field_name}' index {index}, position {bad}: expected an integer token, "
                    f"got {_type_name(row[bad])} {shown(row[bad])}"
                )
    try:
        return np.array(data, dtype=np.int64)
    except OverflowError as err:
        raise UserError(f"{path}: field '{field_name}': token out of the int64 range") from err


def _string_list(path: Path, field_name: str, data: Any) -> list[str]:
    if not isinstance(data, list):
        raise UserError(f"{path}: field '{field_name}' must be a list of strings, got {_type_name(data)}")
    for index, value in enumerate(data):
        if not isinstance(value, str):
            raise UserError(
                f"{path}: field '{field_name}' index {index}: expected a string, got {_type_name(value)} {shown(value)}"
            )
    return [str(value) for value in data]


def _read_metadata(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a JSON object of HRM metadata, got {_type_name(data)}")
    for name, kind in spec.HRM_METADATA_FIELDS.items():
        if name not in data:
            raise UserError(
                f"{path}: field '{name}' missing (HRM metadata needs {sorted(spec.HRM_METADATA_FIELDS)})"
            )
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise UserError(f"{path}: field '{name}' has the wrong type {_type_name(data[name])}")
    return data


def read_split(
    split: str,
    documents: dict[str, Any],
    texts: dict[str, str] | None = None,
    folder: Path = Path(),
) -> RawSplit:
    """A split's 8 parsed documents (by file name) as a checked `RawSplit`: a UserError names the first
    problem's file (under `folder`), field and index."""
    names = spec.raw_split_files(split)
    path = {kind: folder / name for kind, name in names.items()}
    doc = {kind: documents[name] for kind, name in names.items()}
    metadata = _read_metadata(path["dataset"], doc["dataset"])
    inputs, labels = (
        int_matrix(path[k], k, doc[k], (texts or {}).get(names[k])) for k in ("inputs", "labels")
    )
    puzzle_identifiers, puzzle_indices, group_indices = (
        int_vector(path[k], k, doc[k]) for k in ("puzzle_identifiers", "puzzle_indices", "group_indices")
    )
    base_ids = _string_list(path["base_scenario_ids"], "base_scenario_ids", doc["base_scenario_ids"])
    vehicles = _string_list(path["vehicle_types"], "vehicle_types", doc["vehicle_types"])
    structure.raise_first(
        structure.split_problems(
            path,
            inputs,
            labels,
            puzzle_identifiers,
            puzzle_indices,
            group_indices,
            {"base_scenario_ids": base_ids, "vehicle_types": vehicles},
        )
    )
    return RawSplit(
        split, metadata, inputs, labels, puzzle_identifiers, puzzle_indices, group_indices, base_ids, vehicles
    )


def lenient_split(split: str, documents: dict[str, Any], texts: dict[str, str] | None = None) -> RawSplit:
    """The split as far as its documents allow, for the audit of broken files: grid tokens coerced (a stray
    bool in one grid must not hide the whole file; the schema check reports it); a field is None where its
    converter refuses it, with the reason in `unreadable`."""
    names = spec.raw_split_files(split)
    docs = {kind: documents.get(name) for kind, name in names.items()}
    unreadable: dict[str, str] = {}

    def grid(kind: str) -> np.ndarray | None:
        if names[kind] not in documents:
            unreadable[kind] = "missing or not JSON (see file_schemas)"
            return None
        try:
            return int_matrix(
                Path(names[kind]), kind, docs[kind], (texts or {}).get(names[kind]), coerce=True
            )
        except UserError as err:
            unreadable[kind] = str(err).removeprefix(f"{names[kind]}: ")
            return None

    def vector(kind: str) -> np.ndarray | None:
        with suppress(UserError):
            return int_vector(Path(names[kind]), kind, docs[kind])
        return None

    def per_example(kind: str) -> list[Any] | None:
        if isinstance(docs[kind], list) and len(docs[kind]) == n:
            return docs[kind]
        unreadable[kind] = f"not a list of {n} entries, one per example"
        return None

    inputs, labels = grid("inputs"), grid("labels")
    if labels is not None and inputs is not None and labels.shape != inputs.shape:
        unreadable["labels"], labels = "a different shape from the inputs", None
    n = 0 if inputs is None else inputs.shape[0]
    metadata = docs["dataset"] if isinstance(docs["dataset"], dict) else None
    if metadata is None:
        unreadable["dataset"] = "not a JSON object"
    ids, indices = vector("puzzle_identifiers"), vector("puzzle_indices")
    bases, vehicles = per_example("base_scenario_ids"), per_example("vehicle_types")
    view = RawSplit(split, metadata, inputs, labels, ids, indices, None, bases, vehicles, unreadable)
    if view.example_identifier is None:
        unreadable["puzzle_identifiers"] = "puzzle identifiers or indices do not map onto the examples"
    return view


def detect_source(summary: Any) -> str:
    """Our generator writes `generator.name`; anything else with these 18 names is the original tool's."""
    if isinstance(summary, dict) and isinstance(summary.get("generator"), dict):
        if summary["generator"].get("name") == SOURCE_GENERATOR:
            return SOURCE_GENERATOR
    return SOURCE_ORIGINAL


def read_raw(folder: str | Path) -> RawDataset:
    """Read (`read_files`) and structurally check the 18 files in `folder` (convert). Our generator's files:
    every disagreement is an error, there is no excuse for one; the original tool's: `import_original`."""
    files = _all_files(folder)
    folder = files.folder
    summary = files.documents[spec.RAW_SUMMARY_FILE]
    if detect_source(summary) == SOURCE_ORIGINAL:
        return import_original(files)
    summary_path = folder / spec.RAW_SUMMARY_FILE
    splits, identifiers_path, identifiers = _read_splits(files, files.documents)
    cost_model, rows, cols = _summary_model(summary_path, summary)
    seq_len = _seq_len(folder, splits)
    if rows * cols != seq_len:
        raise UserError(
            f"{summary_path}: field 'grid': rows x cols = {rows * cols} but the grids hold {seq_len} tokens"
        )
    if identifiers != cost_model.identifiers():
        raise UserError(
            f"{identifiers_path}: {shown(identifiers)} but the summary's cost model gives {shown(cost_model.identifiers())}"
        )
    _check_identifiers(folder, identifiers_path, identifiers, splits)
    for split, data in splits.items():
        path = {kind: folder / name for kind, name in spec.raw_split_files(split).items()}
        _check_own_metadata(path["dataset"], data, seq_len, rows, cols, len(identifiers))
        for kind, allowed in (("inputs", spec.INPUT_TOKENS), ("labels", spec.LABEL_TOKENS)):
            structure.raise_first(structure.token_problems(path[kind], kind, getattr(data, kind), allowed))
        for index, vehicle in enumerate(data.vehicle_types):
            if vehicle not in identifiers[1:]:
                raise UserError(
                    f"{path['vehicle_types']}: field 'vehicle_types' index {index}: unknown vehicle {shown(vehicle)}"
                )
    return RawDataset(
        folder,
        SOURCE_GENERATOR,
        splits,
        identifiers,
        summary,
        seq_len,
        spec.VOCAB_SIZE,
        rows,
        cols,
        cost_model,
    )


def _all_files(folder: str | Path) -> RawFiles:
    """The 18 files, each parsed, or a UserError: the folder or a file missing, or every file that fails."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: raw data folder not found (run the generate stage first)")
    missing = [name for name in spec.raw_file_names() if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: {len(missing)} of the 18 raw files missing: {', '.join(missing)}")
    files = read_files(folder)
    if files.problems:
        raise UserError("\n".join(files.problems))
    return files


def _read_splits(files: RawFiles, documents: dict[str, Any]) -> tuple[dict[str, RawSplit], Path, list[str]]:
    """Both splits (`read_split`) and the identifiers file's names."""
    splits = {split: read_split(split, documents, files.texts, files.folder) for split in spec.SPLITS}
    identifiers_path = files.folder / spec.RAW_IDENTIFIERS_FILE
    identifiers = _string_list(identifiers_path, "identifiers", documents[spec.RAW_IDENTIFIERS_FILE])
    return splits, identifiers_path, identifiers


def _summary_model(path: Path, summary: dict[str, Any]) -> tuple[spec.CostModel, int, int]:
    try:
        cost_model = spec.CostModel.from_dict(summary["cost_model"], source=f"{path}: field 'cost_model'")
        return cost_model, int(summary["grid"]["rows"]), int(summary["grid"]["cols"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{path}: fields 'cost_model' and 'grid' (rows, cols) unreadable: {shorten(str(err))}"
        ) from err


def _seq_len(folder: Path, splits: dict[str, RawSplit]) -> int:
    widths = {split: s.inputs.shape[1] for split, s in splits.items()}
    if len(set(widths.values())) != 1:
        detail = ", ".join(f"{spec.raw_split_files(k)['inputs']}: {v}" for k, v in widths.items())
        raise UserError(f"{folder}: splits disagree on the sequence length ({detail})")
    return next(iter(widths.values()))


def _check_identifiers(
    folder: Path, identifiers_path: Path, identifiers: list[str], splits: dict[str, RawSplit]
) -> None:
    if not identifiers:
        raise UserError(f"{identifiers_path}: field 'identifiers' is empty (id 0 must be '<blank>')")
    for split, data in splits.items():
        structure.raise_first(
            structure.identifier_problems(
                folder / spec.raw_split_files(split)["puzzle_identifiers"],
                data.puzzle_identifiers,
                len(identifiers),
                identifiers_path.name,
            )
        )


def _check_own_metadata(
    path: Path, data: RawSplit, seq_len: int, rows: int, cols: int, identifiers: int
) -> None:
    expected = {
        "seq_len": seq_len,
        "rows": rows,
        "cols": cols,
        "vocab_size": spec.VOCAB_SIZE,
        "pad_id": spec.PAD,
        "ignore_label_id": spec.PAD,
        "blank_identifier_id": 0,
        "num_puzzle_identifiers": identifiers,
        "total_groups": data.num_groups,
    }
    expected["mean_puzzle_examples"] = data.num_examples / data.num_puzzles
    structure.raise_first(structure.metadata_problems(path, data.metadata, expected))


# ---- the original browser tool's files, brought in at the edge ----------------------------------------------


def import_original(files: RawFiles) -> RawDataset:
    """The original browser tool's 18 files in the one in-memory form: integer base ids taken as names, a
    square grid assumed (no summary tells its shape), tokens 0..9; fatal only what cannot be converted, every
    claim its arrays contradict and its known flaws kept in `RawDataset.issues`."""
    documents = dict(files.documents)
    for split in spec.SPLITS:
        name = spec.raw_split_files(split)["base_scenario_ids"]
        if isinstance(documents[name], list):
            documents[name] = [str(v) if type(v) is int else v for v in documents[name]]
    folder = files.folder
    splits, identifiers_path, identifiers = _read_splits(files, documents)
    seq_len = _seq_len(folder, splits)
    side = math.isqrt(seq_len)
    rows = cols = side if side * side == seq_len else None
    _check_identifiers(folder, identifiers_path, identifiers, splits)
    issues = _original_issues(folder, splits, seq_len, len(identifiers))
    for split, data in splits.items():
        for kind in ("inputs", "labels"):
            path = folder / spec.raw_split_files(split)[kind]
            vocabulary = range(ORIGINAL_VOCAB_SIZE)
            structure.raise_first(structure.token_problems(path, kind, getattr(data, kind), vocabulary))
    summary = files.documents[spec.RAW_SUMMARY_FILE]
    summary = summary if isinstance(summary, dict) else {"summary": summary}
    return RawDataset(
        folder,
        SOURCE_ORIGINAL,
        splits,
        identifiers,
        summary,
        seq_len,
        ORIGINAL_VOCAB_SIZE,
        rows,
        cols,
        None,
        issues,
    )


def _original_issues(folder: Path, splits: dict[str, RawSplit], seq_len: int, identifiers: int) -> list[str]:
    """What the original tool's metadata claims against what its arrays hold, and its known flaws."""
    issues = []
    for split, data in splits.items():
        path = {kind: folder / name for kind, name in spec.raw_split_files(split).items()}
        claims = {
            "seq_len": seq_len,
            "vocab_size": ORIGINAL_VOCAB_SIZE,
            "num_puzzle_identifiers": identifiers,
            "total_groups": data.num_groups,
        }
        for key, real in claims.items():
            if data.metadata.get(key) != real:
                issues.append(
                    f"{path['dataset']}: field '{key}' claims {shown(data.metadata.get(key))} but the files hold {real}"
                )
        if (data.puzzle_identifiers == 0).all():
            issues.append(
                f"{path['puzzle_identifiers']}: every puzzle identifier is 0 (blank): the model is never told the vehicle"
            )
        if (data.labels == 0).any():
            issues.append(
                f"{path['labels']}: {int((data.labels == 0).any(axis=1).sum())} labels hold 0, the ignore label: "
                "those cells drop out of the loss"
            )
        unknown = sorted(set(data.vehicle_types) - set(ORIGINAL_VEHICLES) - set(ORIGINAL_VEHICLES.values()))
        if unknown:
            issues.append(f"{path['vehicle_types']}: unknown vehicle types {shown(unknown)}")
    return [*issues, f"{folder}: written by the original tool: no cost model, routes cannot be re-checked"]


# ---- validate's reading: every file against its JSON Schema (draft 2020-12) in schemas/ ----------------
#
# jsonschema checks ~60k items/s (25 s per grid file), so grid files first go through an exact, fast
# equivalent (`grid_list_conforms`); only one that fails it goes through jsonschema, to report where.

MAX_ERRORS_PER_FILE = 5

GRID_KINDS = ("inputs", "labels")
# file kind -> schema file; the kinds of `spec.raw_split_files` plus the two global files
SCHEMA_FILES = {
    kind: ("grids" if kind in GRID_KINDS else kind) + ".schema.json"
    for kind in (*spec.raw_split_files(spec.SPLITS[0]), "identifiers", "summary")
}
GRID_TOKEN_MAX = 255  # grids.schema.json's bound (uint8 arrays in HRM's layout)


# the 18 file names, each mapped to its kind (a key of SCHEMA_FILES)
RAW_FILE_KINDS = {
    name: kind for split in spec.SPLITS for kind, name in spec.raw_split_files(split).items()
} | {
    spec.RAW_IDENTIFIERS_FILE: "identifiers",
    spec.RAW_SUMMARY_FILE: "summary",
}


@cache
def validator(kind: str):
    """A Draft 2020-12 validator for one file kind; the schema itself is checked first."""
    from jsonschema import Draft202012Validator

    path = SCHEMA_DIR / SCHEMA_FILES[kind]
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(
            f"{path}: schema file not found (the repository's schemas/ folder is needed)"
        ) from err
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def grid_list_conforms(document: Any) -> bool:
    """Exactly grids.schema.json, fast: a non-empty list of non-empty lists of ints in [0, 255].

    `type(x) is int` excludes bool, float and str just as JSON Schema's "integer" excludes true/1.5/"1"
    (json.loads gives float for 1.0, which the schema would accept: such files take the slow path).
    """
    if type(document) is not list or not document:
        return False
    for row in document:
        if type(row) is not list or not row or set(map(type, row)) != {int}:
            return False
        if min(row) < 0 or max(row) > GRID_TOKEN_MAX:
            return False
    return True


def schema_errors(document: Any, kind: str, file_name: str, limit: int = MAX_ERRORS_PER_FILE) -> list[str]:
    """Messages 'file: $[i][j]: what is wrong' for the first `limit` violations of the kind's schema."""
    if kind in GRID_KINDS and grid_list_conforms(document):
        return []
    errors = sorted(
        islice(validator(kind).iter_errors(document), limit), key=lambda error: list(error.absolute_path)
    )
    return [f"{file_name}: {error.json_path}: {_message(error)}" for error in errors]


def _message(error: Any, limit: int = 160) -> str:
    """jsonschema's message with the offending value shortened (`shown`: it may be a 50 MB string), the rest
    kept whole unless it too is long (a long key, a schema's list of choices)."""
    value = repr(error.instance)
    message = error.message
    if len(value) > SHOWN_CHARS and value in message:
        message = message.replace(value, shown(error.instance))
    return shorten(message, limit)


# ---- validate's reading: the structure rules over every split, every problem collected ------------------

MAX_LISTED = 5  # offending indices quoted per problem
GRIDS = ("inputs", "labels")
VECTORS = ("puzzle_identifiers", "puzzle_indices", "group_indices")


def _listed(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:MAX_LISTED])
    return shown + (f" and {len(indices) - MAX_LISTED} more" if len(indices) > MAX_LISTED else "")


def _split_problems(
    split: str, docs: dict[str, Any], identifiers: list[str]
) -> tuple[RawSplit | None, list[str]]:
    """One split's schema-valid documents as a `RawSplit`, and every break of `hrm.data.structure`'s rules
    (the split is None where a rule the split's views rely on is broken)."""
    files = spec.raw_split_files(split)
    meta, meta_name = docs["dataset"], files["dataset"]
    try:  # the schema leaves one thing to the reader: grids of unequal length
        inputs, labels = (int_matrix(Path(files[k]), k, docs[k]) for k in GRIDS)
    except UserError as err:
        return None, [str(err)]
    puzzle_identifiers, puzzle_indices, group_indices = (np.asarray(docs[k], dtype=np.int64) for k in VECTORS)
    per_example = {kind: docs[kind] for kind in ("base_scenario_ids", "vehicle_types")}
    problems = structure.split_problems(
        files, inputs, labels, *(puzzle_identifiers, puzzle_indices, group_indices), per_example
    )
    arrays_agree = not problems
    rows, cols, seq_len = meta["rows"], meta["cols"], meta["seq_len"]
    if seq_len != rows * cols:
        problems.append(
            Problem(
                meta_name, "seq_len", None, f"is {seq_len} but rows x cols = {rows} x {cols} = {rows * cols}"
            )
        )
    if "all" not in meta["sets"]:
        problems.append(
            Problem(
                meta_name,
                "sets",
                None,
                f"is {shown(meta['sets'])} and lacks 'all', the set the file names use",
            )
        )
    truth: dict[str, Any] = {"seq_len": inputs.shape[1], "num_puzzle_identifiers": len(identifiers)}
    if arrays_agree:
        truth |= {
            "total_groups": group_indices.size - 1,
            "mean_puzzle_examples": inputs.shape[0] / puzzle_identifiers.size,
        }
    problems += structure.metadata_problems(meta_name, meta, truth)
    for kind, grid in (("inputs", inputs), ("labels", labels)):
        problems += structure.token_problems(files[kind], kind, grid, range(meta["vocab_size"]))
    problems += structure.identifier_problems(
        files["puzzle_identifiers"], puzzle_identifiers, len(identifiers), spec.RAW_IDENTIFIERS_FILE
    )
    if not arrays_agree:
        return None, [str(problem) for problem in problems]
    view = RawSplit(
        split, meta, inputs, labels, puzzle_identifiers, puzzle_indices, group_indices, *per_example.values()
    )
    if not problems:
        problems += _vehicle_mismatches(view, identifiers)
    return view, [str(problem) for problem in problems]


def _vehicle_mismatches(split: RawSplit, identifiers: list[str]) -> list[Problem]:
    names = np.asarray(identifiers, dtype=object)[split.example_identifier]
    bad = [
        i for i, (name, vehicle) in enumerate(zip(names, split.vehicle_types, strict=True)) if name != vehicle
    ]
    if not bad:
        return []
    i = bad[0]
    return [
        Problem(
            split.files["vehicle_types"],
            "vehicle_types",
            i,
            f"{shown(split.vehicle_types[i])} but its puzzle {int(split.example_puzzle[i])} has identifier "
            f"{int(split.example_identifier[i])} = {shown(names[i])} in {split.files['puzzle_identifiers']} "
            f"(offending examples: {_listed(bad)})",
        )
    ]


def build_dataset(files: RawFiles) -> tuple[RawDataset | None, list[str]]:
    """Schema-valid documents (`raw.read_files`) through `hrm.data.structure`'s rules: the `raw.RawDataset`
    when none is broken, else None and every problem."""
    documents = files.documents
    identifiers = documents[spec.RAW_IDENTIFIERS_FILE]
    problems: list[str] = []
    splits = {}
    for split in spec.SPLITS:
        docs = {kind: documents[name] for kind, name in spec.raw_split_files(split).items()}
        splits[split], found = _split_problems(split, docs, identifiers)
        problems += found
    first, *others = spec.SPLITS
    for other in others:
        for key in ("rows", "cols", "vocab_size"):
            a, b = (documents[spec.raw_split_files(s)["dataset"]][key] for s in (first, other))
            if a != b:
                name = spec.raw_split_files(first)["dataset"]
                problems.append(
                    str(
                        Problem(
                            spec.raw_split_files(other)["dataset"], key, None, f"is {b} but {name} has {a}"
                        )
                    )
                )
    if problems:
        return None, problems
    summary = documents[spec.RAW_SUMMARY_FILE]
    meta = splits[first].metadata
    dataset = RawDataset(
        files.folder,
        detect_source(summary),
        splits,
        list(identifiers),
        summary,
        meta["seq_len"],
        meta["vocab_size"],
        meta["rows"],
        meta["cols"],
        None,
    )
    return dataset, []


@dataclass(frozen=True)
class Reading:
    """Any 18-file set as validate reads it: the documents, every problem of the file layer (missing,
    unreadable, schema) and of the structure rules, the splits in the one form, `raw.RawSplit` (the strict
    dataset when both layers pass, else as far as the documents allow), and the summary's cost table with the
    grid shape (None, and why, where they cannot be used)."""

    files: RawFiles
    file_problems: list[str]
    structure_problems: list[str]
    dataset: RawDataset | None  # None: a layer failed (the splits are then read leniently, for the audit)
    splits: dict[str, RawSplit]
    cost_table: np.ndarray | None  # [identifiers, vocab] int64
    shape: tuple[int, int] | None  # rows, cols
    cost_table_missing: str = ""  # why cost_table or shape is None


def read_checked(raw_dir: str | Path) -> Reading:
    """Validate's reading: the 18 files read once (`read_files`, convert's reader too), each against its
    schema (a file that parses but breaks its schema is kept, for the audit), then the structure rules
    (`build_dataset`) and a usable cost table; every problem collected."""
    files = read_files(raw_dir)
    file_problems = list(files.problems)
    for name, kind in RAW_FILE_KINDS.items():
        if name in files.documents:
            file_problems += schema_errors(files.documents[name], kind, name)
    structure_problems: list[str] = []
    if not file_problems:
        dataset, structure_problems = build_dataset(files)
        if dataset is not None:
            table = np.asarray(dataset.summary["cost_model"]["cost_table"], dtype=np.int64)
            if table.shape == (len(dataset.identifiers), spec.VOCAB_SIZE):
                return Reading(files, [], [], dataset, dataset.splits, table, (dataset.rows, dataset.cols))
            structure_problems = [
                f"{spec.RAW_SUMMARY_FILE}: field 'cost_model.cost_table' has shape {list(table.shape)}, expected "
                f"[{len(dataset.identifiers)}, {spec.VOCAB_SIZE}] (one row per entry of "
                f"{spec.RAW_IDENTIFIERS_FILE}, one column per token): labels cannot be re-checked without it"
            ]
    splits = {split: lenient_split(split, files.documents, files.texts) for split in spec.SPLITS}
    summary = files.documents.get(spec.RAW_SUMMARY_FILE)
    table, shape, missing = _lenient_cost_model(splits, summary)
    return Reading(files, file_problems, structure_problems, None, splits, table, shape, missing)


def _lenient_cost_model(
    splits: dict[str, RawSplit], summary: Any
) -> tuple[np.ndarray | None, tuple[int, int] | None, str]:
    """The summary's cost table and rows x cols as far as broken or foreign files give them."""
    try:
        table = np.asarray(summary["cost_model"]["cost_table"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        return (
            None,
            None,
            (
                f"no cost model: {spec.RAW_SUMMARY_FILE} holds no readable cost_model.cost_table, so no route can be "
                "checked against a vehicle's access rules or for optimality"
            ),
        )
    if table.ndim != 2 or table.shape[1] != spec.VOCAB_SIZE:
        return (
            None,
            None,
            f"{spec.RAW_SUMMARY_FILE}: cost_model.cost_table is not [vehicles + 1, {spec.VOCAB_SIZE}]",
        )
    candidates = []
    if isinstance(summary, dict) and isinstance(summary.get("grid"), dict):
        candidates.append((summary["grid"].get("rows"), summary["grid"].get("cols")))
    candidates += [((v.metadata or {}).get("rows"), (v.metadata or {}).get("cols")) for v in splits.values()]
    widths = {v.inputs.shape[1] for v in splits.values() if v.inputs is not None}
    for rows, cols in candidates:
        if isinstance(rows, int) and isinstance(cols, int) and widths == {rows * cols}:
            return table, (rows, cols), ""
    return None, None, "rows x cols unknown or not the grids' length"
