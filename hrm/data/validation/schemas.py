"""Each of the 18 raw files against its JSON Schema (draft 2020-12) in `schemas/`.

jsonschema checks ~60k items/s (25 s per grid file), so grid files first go through an exact, fast
equivalent (`grid_list_conforms`); only one that fails it goes through jsonschema, to report where.
"""

from __future__ import annotations

import json
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

from hrm.config import SCHEMA_DIR
from hrm.data import spec
from hrm.data.conversion import raw
from hrm.io import SHOWN_CHARS, UserError, shorten, shown

MAX_ERRORS_PER_FILE = 5

GRID_KINDS = ("inputs", "labels")
# file kind -> schema file; the kinds of `spec.raw_split_files` plus the two global files
SCHEMA_FILES = {
    kind: ("grids" if kind in GRID_KINDS else kind) + ".schema.json"
    for kind in (*spec.raw_split_files(spec.SPLITS[0]), "identifiers", "summary")
}
GRID_TOKEN_MAX = 255  # grids.schema.json's bound (uint8 arrays in HRM's layout)


def raw_file_kinds() -> dict[str, str]:
    """The 18 file names, each mapped to its kind (a key of SCHEMA_FILES)."""
    kinds = {name: kind for split in spec.SPLITS for kind, name in spec.raw_split_files(split).items()}
    return kinds | {spec.RAW_IDENTIFIERS_FILE: "identifiers", spec.RAW_SUMMARY_FILE: "summary"}


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


def read_raw_documents(raw_dir: str | Path) -> tuple[raw.RawFiles, list[str]]:
    """Every one of the 18 files that parses (`files.documents`, by name; read by `hrm.data.conversion.raw.read_files`,
    convert's reader too), and the problems found: files missing, unreadable or not JSON, and schema
    violations (a file that parses but breaks its schema is kept, for the audit)."""
    files = raw.read_files(raw_dir)
    problems = list(files.problems)
    for name, kind in raw_file_kinds().items():
        if name in files.documents:
            problems.extend(schema_errors(files.documents[name], kind, name))
    return files, problems
