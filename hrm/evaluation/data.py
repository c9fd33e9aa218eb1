"""Reading a split of any dataset in HRM's on-disk layout, plus the optional route cost model beside it.

Evaluation needs every example in file order with its puzzle identifier (the vehicle), which is what HRM's
test batches hold too; reading the arrays here keeps evaluation usable on any HRM-layout data (Maze, ARC, the
original tool's files) and gives errors that name the file, the field and the index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import spec
from hrm.evaluation.metrics import RouteTask
from hrm.io import UserError

METADATA_FIELDS = ("seq_len", "vocab_size", "pad_id", "num_puzzle_identifiers", "sets")


@dataclass
class SplitData:
    """All examples of one split, in file order."""

    name: str
    inputs: np.ndarray  # [N, seq_len] int64
    labels: np.ndarray  # [N, seq_len] int64
    identifiers: np.ndarray  # [N] int64, puzzle identifier of each example's puzzle
    base_ids: np.ndarray | None  # [N] int64 base scenario index, when the data carries it
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.inputs)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: file not found (run the convert stage first?)") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise UserError(f"{path}: file not found") from err
    except ValueError as err:
        raise UserError(f"{path}: not a readable .npy array ({err})") from err


def read_metadata(root: Path, split: str) -> dict[str, Any]:
    path = root / split / "dataset.json"
    metadata = read_json(path)
    if not isinstance(metadata, dict):
        raise UserError(f"{path}: must be a JSON object")
    for name in METADATA_FIELDS:
        if name not in metadata:
            raise UserError(f"{path}: field '{name}' is missing")
    for name in ("seq_len", "vocab_size", "num_puzzle_identifiers"):
        if not isinstance(metadata[name], int) or metadata[name] <= 0:
            raise UserError(f"{path}: field '{name}' must be a positive integer, got {metadata[name]!r}")
    if not isinstance(metadata["sets"], list) or not metadata["sets"]:
        raise UserError(f"{path}: field 'sets' must be a non-empty list of set names")
    return metadata


def load_split(root: str | Path, split: str) -> SplitData:
    """Every set of the split concatenated (HRM order), each example tagged with its puzzle identifier."""
    root = Path(root)
    metadata = read_metadata(root, split)
    seq_len, vocab, n_ids = metadata["seq_len"], metadata["vocab_size"], metadata["num_puzzle_identifiers"]
    parts: dict[str, list[np.ndarray]] = {"inputs": [], "labels": [], "identifiers": [], "base": []}
    has_base = True
    for set_name in metadata["sets"]:
        prefix = root / split / f"{set_name}__"
        arrays = {
            name: _load_array(Path(f"{prefix}{name}.npy"))
            for name in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices")
        }
        for name in ("inputs", "labels"):
            array = arrays[name]
            where = f"{prefix}{name}.npy"
            if array.ndim != 2 or array.shape[1] != seq_len:
                raise UserError(f"{where}: shape {array.shape}, expected [N, seq_len={seq_len}]")
            if array.size and (array.min() < 0 or array.max() >= vocab):
                bad = int(np.flatnonzero((array < 0).any(1) | (array >= vocab).any(1))[0])
                raise UserError(f"{where}: row {bad} holds a token outside 0..{vocab - 1}")
        n_examples = len(arrays["inputs"])
        if len(arrays["labels"]) != n_examples:
            raise UserError(f"{prefix}labels.npy: {len(arrays['labels'])} rows but inputs has {n_examples}")
        indices = arrays["puzzle_indices"].astype(np.int64)
        identifiers = arrays["puzzle_identifiers"].astype(np.int64)
        where = f"{prefix}puzzle_indices.npy"
        if indices.ndim != 1 or len(indices) != len(identifiers) + 1:
            raise UserError(f"{where}: needs P+1 = {len(identifiers) + 1} entries, has {indices.shape}")
        if indices[0] != 0 or indices[-1] != n_examples:
            raise UserError(f"{where}: must start at 0 and end at N = {n_examples}")
        steps = np.diff(indices)
        if (steps < 0).any():
            raise UserError(f"{where}: index {int(np.flatnonzero(steps < 0)[0]) + 1} decreases")
        bad_ids = np.flatnonzero((identifiers < 0) | (identifiers >= n_ids))
        if bad_ids.size:
            raise UserError(
                f"{prefix}puzzle_identifiers.npy: index {int(bad_ids[0])} is {int(identifiers[bad_ids[0]])}, "
                f"outside 0..{n_ids - 1}"
            )
        parts["inputs"].append(arrays["inputs"].astype(np.int64))
        parts["labels"].append(arrays["labels"].astype(np.int64))
        parts["identifiers"].append(np.repeat(identifiers, steps))
        base_path = Path(f"{prefix}base_scenario_ids.npy")
        if base_path.exists():
            base = _load_array(base_path).astype(np.int64).reshape(-1)
            if len(base) != n_examples:
                raise UserError(f"{base_path}: {len(base)} entries but {n_examples} examples")
            parts["base"].append(base)
        else:
            has_base = False
    return SplitData(
        name=split,
        inputs=np.concatenate(parts["inputs"]),
        labels=np.concatenate(parts["labels"]),
        identifiers=np.concatenate(parts["identifiers"]),
        base_ids=np.concatenate(parts["base"]) if has_base and parts["base"] else None,
        metadata=metadata,
    )


def load_identifier_names(root: str | Path, count: int) -> list[str]:
    """identifiers.json names (id -> name); generic names where the file is absent or short."""
    path = Path(root) / "identifiers.json"
    names: list[str] = []
    if path.exists():
        names = read_json(path)
        if not isinstance(names, list):
            raise UserError(f"{path}: must be a JSON list of names")
        names = [str(name) for name in names]
    return names[:count] + [f"id{i}" for i in range(len(names), count)]


def load_route_task(root: str | Path, metadata: dict[str, Any]) -> RouteTask | None:
    """The cost model from routing.json, or None when the data carries none (route metrics are then skipped)."""
    path = Path(root) / spec.HRM_ROUTING_FILE
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a JSON object")
    for name in ("rows", "cols", "cost_table", "tokens"):
        if name not in data:
            raise UserError(f"{path}: field '{name}' is missing")
    if data["tokens"] != spec.token_names():
        raise UserError(
            f"{path}: field 'tokens' differs from this code's token table (hrm/data/spec.py); "
            "route metrics would misread the grids"
        )
    rows, cols = data["rows"], data["cols"]
    if not (isinstance(rows, int) and isinstance(cols, int) and rows > 0 and cols > 0):
        raise UserError(f"{path}: fields 'rows' and 'cols' must be positive integers")
    if rows * cols > metadata["seq_len"]:
        raise UserError(f"{path}: rows*cols = {rows * cols} exceeds seq_len {metadata['seq_len']}")
    try:
        table = np.asarray(data["cost_table"], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: field 'cost_table' must be a list of integer lists ({err})") from err
    expected = (metadata["num_puzzle_identifiers"], spec.VOCAB_SIZE)
    if table.ndim != 2 or table.shape[0] < expected[0] or table.shape[1] != expected[1]:
        raise UserError(
            f"{path}: field 'cost_table' has shape {table.shape}, expected "
            f"[num_puzzle_identifiers={expected[0]}, vocab={expected[1]}]"
        )
    return RouteTask(rows=rows, cols=cols, cost_table=table)
