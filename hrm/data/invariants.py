"""Cross-file invariants of the 18 raw files, and their numpy view for the compliance checks.

A file set that breaks one of these cannot be read as a dataset at all (lengths disagree, indices point
outside the arrays, a token the metadata's vocabulary lacks), so every break is collected and raised as one
UserError naming file, field and index; validate then audits the files (`hrm.data.audit`), each break a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hrm.data import spec
from hrm.io import UserError

MAX_LISTED = 5  # offending indices quoted per problem


@dataclass
class SplitData:
    """One split's arrays. Example i belongs to puzzle `example_puzzle[i]` and group `example_group[i]`."""

    name: str
    files: dict[str, str]  # kind -> file name
    metadata: dict[str, Any]
    inputs: np.ndarray  # uint8 [N, seq_len]
    labels: np.ndarray  # uint8 [N, seq_len]
    puzzle_identifiers: np.ndarray  # int64 [P]
    puzzle_indices: np.ndarray  # int64 [P + 1]
    group_indices: np.ndarray  # int64 [G + 1]
    base_ids: list[str]
    vehicles: list[str]
    example_puzzle: np.ndarray = field(init=False)
    example_group: np.ndarray = field(init=False)
    example_identifier: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        examples_per_puzzle = np.diff(self.puzzle_indices)
        puzzles_per_group = np.diff(self.group_indices)
        self.example_puzzle = np.repeat(np.arange(len(examples_per_puzzle)), examples_per_puzzle)
        puzzle_group = np.repeat(np.arange(len(puzzles_per_group)), puzzles_per_group)
        self.example_group = puzzle_group[self.example_puzzle]
        self.example_identifier = self.puzzle_identifiers[self.example_puzzle]

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def group_count(self) -> int:
        return len(self.group_indices) - 1

    def where(self, kind: str, index: int | None = None) -> str:
        """'file[index]' for messages."""
        return self.files[kind] + (f"[{index}]" if index is not None else "")


@dataclass
class RawDataset:
    splits: dict[str, SplitData]
    identifiers: list[str]
    summary: dict[str, Any]
    rows: int
    cols: int


def _listed(indices: np.ndarray | list[int]) -> str:
    indices = [int(i) for i in indices]
    shown = ", ".join(str(i) for i in indices[:MAX_LISTED])
    return shown + (f" and {len(indices) - MAX_LISTED} more" if len(indices) > MAX_LISTED else "")


def _check_offsets(name: str, offsets: list[int], end: int, end_what: str, problems: list[str]) -> None:
    """Offsets start at 0 (schema), strictly increase (no empty puzzle or group) and end at `end`."""
    steps = np.diff(np.asarray(offsets, dtype=np.int64))
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        problems.append(
            f"{name}: $[{i}] = {offsets[i]} is not greater than $[{i - 1}] = {offsets[i - 1]}: indices must "
            f"increase (offending entries: {_listed(bad + 1)})"
        )
    if offsets[-1] != end:
        problems.append(
            f"{name}: last entry $[{len(offsets) - 1}] = {offsets[-1]}, expected {end} ({end_what})"
        )


def _check_split(split: str, docs: dict[str, Any], identifiers: list[str], problems: list[str]) -> None:
    files = spec.raw_split_files(split)
    meta = docs["dataset"]
    meta_name = files["dataset"]
    rows, cols, seq_len = meta["rows"], meta["cols"], meta["seq_len"]
    if seq_len != rows * cols:
        problems.append(f"{meta_name}: seq_len = {seq_len} but rows x cols = {rows} x {cols} = {rows * cols}")
    if "all" not in meta["sets"]:
        problems.append(f"{meta_name}: sets = {meta['sets']} lacks 'all', the set the file names use")
    if meta["num_puzzle_identifiers"] != len(identifiers):
        problems.append(
            f"{meta_name}: num_puzzle_identifiers = {meta['num_puzzle_identifiers']} but "
            f"{spec.RAW_IDENTIFIERS_FILE} has {len(identifiers)} entries"
        )

    n_examples = len(docs["inputs"])
    for kind in ("labels", "base_scenario_ids", "vehicle_types"):
        if len(docs[kind]) != n_examples:
            problems.append(
                f"{files[kind]}: {len(docs[kind])} entries but {files['inputs']} has {n_examples} examples"
            )
    for kind in ("inputs", "labels"):
        bad = [i for i, grid in enumerate(docs[kind]) if len(grid) != seq_len]
        if bad:
            problems.append(
                f"{files[kind]}: grid $[{bad[0]}] has {len(docs[kind][bad[0]])} tokens, expected seq_len = "
                f"{seq_len} from {meta_name} (offending grids: {_listed(bad)})"
            )
        vocab = meta["vocab_size"]
        bad = [i for i, grid in enumerate(docs[kind]) if max(grid) >= vocab]
        if bad:
            grid = docs[kind][bad[0]]
            cell = next(j for j, token in enumerate(grid) if token >= vocab)
            problems.append(
                f"{files[kind]}: $[{bad[0]}][{cell}] = {grid[cell]} is out of the vocabulary "
                f"(vocab_size = {vocab} in {meta_name}; offending grids: {_listed(bad)})"
            )

    puzzle_ids = docs["puzzle_identifiers"]
    puzzle_offsets = docs["puzzle_indices"]
    group_offsets = docs["group_indices"]
    if len(puzzle_offsets) != len(puzzle_ids) + 1:
        problems.append(
            f"{files['puzzle_indices']}: {len(puzzle_offsets)} entries, expected puzzles + 1 = "
            f"{len(puzzle_ids) + 1} ({files['puzzle_identifiers']} has {len(puzzle_ids)})"
        )
    _check_offsets(files["puzzle_indices"], puzzle_offsets, n_examples, "the number of examples", problems)
    _check_offsets(files["group_indices"], group_offsets, len(puzzle_ids), "the number of puzzles", problems)
    if meta["total_groups"] != len(group_offsets) - 1:
        problems.append(
            f"{meta_name}: total_groups = {meta['total_groups']} but {files['group_indices']} holds "
            f"{len(group_offsets) - 1} groups"
        )
    if puzzle_ids and not math.isclose(meta["mean_puzzle_examples"], n_examples / len(puzzle_ids)):
        problems.append(
            f"{meta_name}: mean_puzzle_examples = {meta['mean_puzzle_examples']} but the files hold "
            f"{n_examples} examples in {len(puzzle_ids)} puzzles = {n_examples / len(puzzle_ids):g}"
        )
    bad = [i for i, pid in enumerate(puzzle_ids) if pid >= len(identifiers)]
    if bad:
        problems.append(
            f"{files['puzzle_identifiers']}: $[{bad[0]}] = {puzzle_ids[bad[0]]} is out of range: "
            f"{spec.RAW_IDENTIFIERS_FILE} has ids 0..{len(identifiers) - 1} (offending puzzles: {_listed(bad)})"
        )


def _vehicle_mismatches(split: SplitData, identifiers: list[str]) -> list[str]:
    names = np.asarray(identifiers, dtype=object)[split.example_identifier]
    bad = [i for i, (name, vehicle) in enumerate(zip(names, split.vehicles, strict=True)) if name != vehicle]
    if not bad:
        return []
    i = bad[0]
    return [
        f"{split.where('vehicle_types', i)} = {split.vehicles[i]!r} but its puzzle "
        f"{int(split.example_puzzle[i])} has identifier {int(split.example_identifier[i])} = {names[i]!r} "
        f"in {split.files['puzzle_identifiers']} (offending examples: {_listed(bad)})"
    ]


def build_dataset(documents: dict[str, Any]) -> RawDataset:
    """Check cross-file invariants of schema-valid documents and return their arrays, or raise UserError."""
    identifiers = documents[spec.RAW_IDENTIFIERS_FILE]
    problems: list[str] = []
    split_docs = {
        split: {kind: documents[name] for kind, name in spec.raw_split_files(split).items()}
        for split in spec.SPLITS
    }
    for split in spec.SPLITS:
        _check_split(split, split_docs[split], identifiers, problems)
    first, *others = spec.SPLITS
    for other in others:
        for key in ("rows", "cols", "vocab_size"):
            a, b = split_docs[first]["dataset"][key], split_docs[other]["dataset"][key]
            if a != b:
                problems.append(
                    f"{spec.raw_split_files(other)['dataset']}: {key} = {b} but "
                    f"{spec.raw_split_files(first)['dataset']} has {a}"
                )
    if problems:
        raise UserError(f"{len(problems)} cross-file problem(s):\n  " + "\n  ".join(problems))

    splits = {}
    for split in spec.SPLITS:
        docs = split_docs[split]
        splits[split] = SplitData(
            name=split,
            files=spec.raw_split_files(split),
            metadata=docs["dataset"],
            inputs=np.asarray(docs["inputs"], dtype=np.uint8),
            labels=np.asarray(docs["labels"], dtype=np.uint8),
            puzzle_identifiers=np.asarray(docs["puzzle_identifiers"], dtype=np.int64),
            puzzle_indices=np.asarray(docs["puzzle_indices"], dtype=np.int64),
            group_indices=np.asarray(docs["group_indices"], dtype=np.int64),
            base_ids=list(docs["base_scenario_ids"]),
            vehicles=list(docs["vehicle_types"]),
        )
        problems.extend(_vehicle_mismatches(splits[split], identifiers))
    if problems:
        raise UserError(f"{len(problems)} cross-file problem(s):\n  " + "\n  ".join(problems))
    meta = split_docs[first]["dataset"]
    return RawDataset(splits, list(identifiers), documents[spec.RAW_SUMMARY_FILE], meta["rows"], meta["cols"])
