"""Cross-file invariants of the 18 raw files (every break collected, one UserError), checked before validate
builds `raw.RawDataset`; `read_checked` reads any file set once, with every problem of every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import spec
from hrm.data.conversion import raw
from hrm.data.conversion.raw import RawDataset, RawSplit
from hrm.data.validation import consistency
from hrm.data.validation.schemas import read_raw_documents
from hrm.io import UserError, shown

MAX_LISTED = 5  # offending indices quoted per problem


def _listed(indices: np.ndarray | list[int]) -> str:
    indices = [int(i) for i in indices]
    shown = ", ".join(str(i) for i in indices[:MAX_LISTED])
    return shown + (f" and {len(indices) - MAX_LISTED} more" if len(indices) > MAX_LISTED else "")


def _check_offsets(name: str, offsets: list[int], end: int, end_what: str, problems: list[str]) -> None:
    """Offsets start at 0 (schema), strictly increase (no empty puzzle or group) and end at `end`."""
    bad = raw.index_breaks(offsets)
    if bad.size:
        i = int(bad[0])
        problems.append(
            f"{name}: $[{i}] = {offsets[i]} is not greater than $[{i - 1}] = {offsets[i - 1]}: indices must "
            f"increase (offending entries: {_listed(bad)})"
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


def _vehicle_mismatches(split: RawSplit, identifiers: list[str]) -> list[str]:
    names = np.asarray(identifiers, dtype=object)[split.example_identifier]
    bad = [
        i for i, (name, vehicle) in enumerate(zip(names, split.vehicle_types, strict=True)) if name != vehicle
    ]
    if not bad:
        return []
    i = bad[0]
    return [
        f"{split.where('vehicle_types', i)} = {shown(split.vehicle_types[i])} but its puzzle "
        f"{int(split.example_puzzle[i])} has identifier {int(split.example_identifier[i])} = {shown(names[i])} "
        f"in {split.files['puzzle_identifiers']} (offending examples: {_listed(bad)})"
    ]


def build_dataset(files: raw.RawFiles) -> RawDataset:
    """Check cross-file invariants of schema-valid documents (`raw.read_files`) and return them as a
    `raw.RawDataset`, or raise UserError listing every problem."""
    documents = files.documents
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

    summary = documents[spec.RAW_SUMMARY_FILE]
    source = raw.detect_source(summary)
    splits = {}
    for split in spec.SPLITS:
        # messages name the bare file, as every message above does
        splits[split] = raw.read_split(split, documents, files.texts, Path(), source)
        problems.extend(_vehicle_mismatches(splits[split], identifiers))
    if problems:
        raise UserError(f"{len(problems)} cross-file problem(s):\n  " + "\n  ".join(problems))
    meta = split_docs[first]["dataset"]
    return RawDataset(
        files.folder,
        source,
        splits,
        list(identifiers),
        summary,
        meta["seq_len"],
        meta["vocab_size"],
        meta["rows"],
        meta["cols"],
        None,
    )


@dataclass(frozen=True)
class Reading:
    """Any 18-file set as validate reads it: the documents, every problem of the file layer (missing,
    unreadable, schema) and of the structure layer (cross-file invariants, cost table), and the splits in the
    one form, `raw.RawSplit`: the strict dataset when both layers pass, else as far as the documents allow."""

    files: raw.RawFiles
    file_problems: list[str]
    structure_problems: list[str]
    dataset: RawDataset | None  # None: a layer failed (the splits are then read leniently, for the audit)
    cost_table: np.ndarray | None
    splits: dict[str, RawSplit]


def read_checked(raw_dir: str | Path) -> Reading:
    """Read the 18 files once (`raw.read_files`), check every layer, collect every problem."""
    files, file_problems = read_raw_documents(raw_dir)
    dataset, cost_table, structure_problems = (None, None, []) if file_problems else _strict_dataset(files)
    if dataset is not None:
        return Reading(files, [], [], dataset, cost_table, dataset.splits)
    splits = {split: raw.lenient_split(split, files.documents, files.texts) for split in spec.SPLITS}
    return Reading(files, file_problems, structure_problems, None, None, splits)


def _strict_dataset(files: raw.RawFiles) -> tuple[RawDataset | None, np.ndarray | None, list[str]]:
    """Schema-valid files through the cross-file invariants (`build_dataset`) with a usable cost table:
    (dataset, the summary's cost table, []), or (None, None, every structure problem)."""
    try:
        dataset = build_dataset(files)
        cost_table = consistency.summary_cost_table(dataset.summary)
        if cost_table.shape != (len(dataset.identifiers), spec.VOCAB_SIZE):
            raise UserError(
                f"{spec.RAW_SUMMARY_FILE}: cost_model.cost_table has shape {list(cost_table.shape)}, expected "
                f"[{len(dataset.identifiers)}, {spec.VOCAB_SIZE}] (one row per entry of "
                f"{spec.RAW_IDENTIFIERS_FILE}, one column per token): labels cannot be re-checked without it"
            )
    except UserError as err:
        lines = str(err).splitlines()
        return None, None, [line.strip() for line in lines[1:]] if len(lines) > 1 else lines
    return dataset, cost_table, []
