"""The structure rules of one split in HRM's shape, each written once, for every reader of the data.

Convert (`raw.read_split`: the first problem, as a UserError), validate (`raw.read_checked`: every problem, in the
report) and the trainer's dataset reader (`hrm.training.data.PuzzleDataset`, on the .npy files) call the same
functions and so word each rule the same way: "FILE: field 'F' index I: what is wrong". The JSON Schemas in
schemas/ check types only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm.io import UserError, shown


@dataclass(frozen=True)
class Problem:
    """One broken rule: the file, the field, the index (an entry, or (row, position) in a grid) and what is
    wrong. Without an index the message reads on from the field: "field 'labels' has 23 entries but ..."."""

    file: str | Path
    field: str
    index: int | tuple[int, int] | None
    message: str

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.file}: field '{self.field}' {self.message}"
        index = self.index if isinstance(self.index, int) else f"{self.index[0]}, position {self.index[1]}"
        return f"{self.file}: field '{self.field}' index {index}: {self.message}"


def raise_first(problems: list[Problem]) -> None:
    """Convert and the trainer stop at the first problem."""
    if problems:
        raise UserError(str(problems[0]))


def index_breaks(indices: np.ndarray) -> np.ndarray:
    """Positions i where an index array does not rise above entry i - 1 (an empty puzzle or group, or a step
    back)."""
    return np.flatnonzero(np.diff(np.asarray(indices, dtype=np.int64)) <= 0) + 1


def index_problems(
    file: str | Path, field: str, indices: np.ndarray, end: int, end_name: str
) -> list[Problem]:
    """The index-array rule (puzzle_indices over examples, group_indices over puzzles): start at 0, rise
    strictly (no empty puzzle or group), end at the count it indexes."""
    if indices.ndim != 1 or indices.size < 2:
        return [Problem(file, field, None, f"needs at least 2 entries (0 and the end), has {indices.size}")]
    problems = []
    if indices[0] != 0:
        problems.append(Problem(file, field, 0, f"must be 0, is {indices[0]}"))
    problems += [
        Problem(
            file,
            field,
            int(bad),
            f"{indices[bad]} after {indices[bad - 1]}, indices must rise strictly (non-monotone, or an empty "
            "puzzle/group)",
        )
        for bad in index_breaks(indices)
    ]
    if indices[-1] != end:
        problems.append(
            Problem(file, field, indices.size - 1, f"ends at {indices[-1]} but {end_name} is {end}")
        )
    return problems


def token_problems(file: str | Path, field: str, grid: np.ndarray, allowed: Sequence[int]) -> list[Problem]:
    """Grid tokens outside `allowed` (the vocabulary, or the tokens an input or a label may hold): the first."""
    if isinstance(allowed, range) and allowed.step == 1 and grid.size:
        if allowed.start <= int(grid.min()) and int(grid.max()) < allowed.stop:
            return []  # fast: the trainer's memory-mapped grids
    bad = ~np.isin(grid, np.asarray(list(allowed), dtype=np.int64))
    if not bad.any():
        return []
    row, col = (int(v) for v in np.argwhere(bad)[0])
    return [
        Problem(
            file,
            field,
            (row, col),
            f"token {grid[row, col]} is not allowed here (allowed {min(allowed)}..{max(allowed)}; "
            f"{int(bad.sum())} such tokens)",
        )
    ]


def split_problems(
    files: Mapping[str, str | Path],
    inputs: np.ndarray,
    labels: np.ndarray,
    puzzle_identifiers: np.ndarray,
    puzzle_indices: np.ndarray,
    group_indices: np.ndarray,
    per_example: Mapping[str, Sequence[Any]] | None = None,
) -> list[Problem]:
    """The arrays of one split agree with each other: labels shaped as inputs, one entry per example in each
    per-example list, the two index arrays, one identifier per puzzle. `files`: kind -> file named in messages."""
    problems = []
    examples = inputs.shape[0]
    if labels.shape != inputs.shape:
        problems.append(
            Problem(
                files["labels"],
                "labels",
                None,
                f"has shape {list(labels.shape)} but {Path(files['inputs']).name} has {list(inputs.shape)} "
                "(examples x seq_len must agree)",
            )
        )
    for kind, values in (per_example or {}).items():
        if len(values) != examples:
            problems.append(
                Problem(
                    files[kind], kind, None, f"has {len(values)} entries but there are {examples} examples"
                )
            )
    problems += index_problems(
        files["puzzle_indices"], "puzzle_indices", puzzle_indices, examples, "the number of examples"
    )
    puzzles = puzzle_indices.size - 1
    if puzzle_identifiers.size != puzzles:
        problems.append(
            Problem(
                files["puzzle_identifiers"],
                "puzzle_identifiers",
                None,
                f"has {puzzle_identifiers.size} entries but puzzle_indices describes {puzzles} puzzles",
            )
        )
    problems += index_problems(
        files["group_indices"], "group_indices", group_indices, puzzles, "the number of puzzles"
    )
    return problems


def identifier_problems(
    file: str | Path, puzzle_identifiers: np.ndarray, count: int, identifiers_file: str
) -> list[Problem]:
    """Every puzzle identifier is an id of the identifiers file (0..count - 1): the first that is not."""
    bad = np.flatnonzero((puzzle_identifiers < 0) | (puzzle_identifiers >= count))
    if not bad.size:
        return []
    index = int(bad[0])
    return [
        Problem(
            file,
            "puzzle_identifiers",
            index,
            f"{puzzle_identifiers[index]} is not an id of {identifiers_file} (0..{count - 1})",
        )
    ]


def metadata_problems(
    file: str | Path, metadata: Mapping[str, Any], truth: Mapping[str, Any]
) -> list[Problem]:
    """What dataset.json says against what the files hold (a float compared with math.isclose)."""
    problems = []
    for key, value in truth.items():
        claim = metadata.get(key)
        if isinstance(value, float):
            wrong = not isinstance(claim, int | float) or not math.isclose(float(claim), value)
        else:
            wrong = claim != value
        if wrong:
            problems.append(Problem(file, key, None, f"is {shown(claim)}, the files say {value}"))
    return problems
