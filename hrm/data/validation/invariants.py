"""Cross-file invariants of the 18 raw files (every break collected, one UserError), checked before validate
builds `raw.RawDataset`; `read_checked` reads any file set once, with every problem of every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import spec, structure
from hrm.data.conversion import raw
from hrm.data.conversion.raw import RawDataset, RawSplit
from hrm.data.structure import Problem
from hrm.data.validation import consistency
from hrm.data.validation.schemas import read_raw_documents
from hrm.io import UserError, shown

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
        inputs, labels = (raw.int_matrix(Path(files[k]), k, docs[k]) for k in GRIDS)
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


def build_dataset(files: raw.RawFiles) -> tuple[RawDataset | None, list[str]]:
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
        raw.detect_source(summary),
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

    files: raw.RawFiles
    file_problems: list[str]
    structure_problems: list[str]
    dataset: RawDataset | None  # None: a layer failed (the splits are then read leniently, for the audit)
    splits: dict[str, RawSplit]
    cost_table: np.ndarray | None  # [identifiers, vocab] int64
    shape: tuple[int, int] | None  # rows, cols
    cost_table_missing: str = ""  # why cost_table or shape is None


def read_checked(raw_dir: str | Path) -> Reading:
    """Read the 18 files once (`raw.read_files`), check every layer, collect every problem."""
    files, file_problems = read_raw_documents(raw_dir)
    dataset, cost_table, structure_problems = (None, None, []) if file_problems else _strict_dataset(files)
    if dataset is not None:
        shape = (dataset.rows, dataset.cols)
        return Reading(files, [], [], dataset, dataset.splits, cost_table, shape)
    splits = {split: raw.lenient_split(split, files.documents, files.texts) for split in spec.SPLITS}
    summary = files.documents.get(spec.RAW_SUMMARY_FILE)
    table, shape, missing = _lenient_cost_model(splits, summary)
    return Reading(files, file_problems, structure_problems, None, splits, table, shape, missing)


def _lenient_cost_model(
    splits: dict[str, RawSplit], summary: Any
) -> tuple[np.ndarray | None, tuple[int, int] | None, str]:
    """The summary's cost table and rows x cols as far as broken or foreign files give them."""
    try:
        table = consistency.summary_cost_table(summary)
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


def _strict_dataset(files: raw.RawFiles) -> tuple[RawDataset | None, np.ndarray | None, list[str]]:
    """Schema-valid files through the structure rules (`build_dataset`) with a usable cost table:
    (dataset, the summary's cost table, []), or (None, None, every structure problem)."""
    dataset, problems = build_dataset(files)
    if dataset is None:
        return None, None, problems
    cost_table = consistency.summary_cost_table(dataset.summary)
    if cost_table.shape != (len(dataset.identifiers), spec.VOCAB_SIZE):
        return (
            None,
            None,
            [
                f"{spec.RAW_SUMMARY_FILE}: field 'cost_model.cost_table' has shape {list(cost_table.shape)}, expected "
                f"[{len(dataset.identifiers)}, {spec.VOCAB_SIZE}] (one row per entry of "
                f"{spec.RAW_IDENTIFIERS_FILE}, one column per token): labels cannot be re-checked without it"
            ],
        )
    return dataset, cost_table, []
