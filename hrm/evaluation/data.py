"""A split of any HRM-layout dataset in file order, each example with its puzzle identifier (the vehicle), and
the optional route cost model beside it. The arrays come through the trainer's reader
(`hrm.training.data.PuzzleDataset`): Maze, ARC or the original tool's files pass the same checks as in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import spec
from hrm.evaluation.metrics import RouteTask
from hrm.io import UserError, read_json, read_npy, shown


@dataclass
class SplitData:
    """All examples of one split, in file order, with the puzzle identifier (vehicle) of each."""

    name: str
    dataset: Any  # hrm.training.data.PuzzleDataset: checked arrays, metadata, HRM's eval batches
    inputs: np.ndarray  # [N, seq_len], uint8 (int32 for a vocabulary over 256)
    labels: np.ndarray  # [N, seq_len]
    identifiers: np.ndarray  # [N] int64
    base_ids: np.ndarray | None  # [N] int64 base scenario index, when the data carries it

    @property
    def metadata(self) -> Any:
        return self.dataset.metadata

    def __len__(self) -> int:
        return len(self.inputs)


def load_split(root: str | Path, split: str, limit: int = 0) -> SplitData:
    """The split held in memory (evaluation reads every row many times); `limit` > 0 keeps the first `limit`
    examples (whole bases first: a base's 4 vehicles are adjacent)."""
    from hrm.training.data import PuzzleDataset

    dataset = PuzzleDataset(root, split)
    count = dataset.num_examples if limit <= 0 else min(limit, dataset.num_examples)
    rows = np.arange(count)
    dtype = np.uint8 if dataset.metadata.vocab_size <= 256 else np.int32  # a split's predictions stay small
    base_ids = None
    base_path = dataset.file(spec.HRM_EXTRA_ARRAYS[0])
    if base_path.exists():
        base_ids = read_npy(base_path).astype(np.int64).reshape(-1)
        if len(base_ids) != dataset.num_examples:
            raise UserError(f"{base_path}: {len(base_ids)} entries but {dataset.num_examples} examples")
        base_ids = base_ids[:count]
    return SplitData(
        name=split,
        dataset=dataset,
        inputs=np.asarray(dataset.inputs[:count], dtype=dtype),
        labels=np.asarray(dataset.labels[:count], dtype=dtype),
        identifiers=dataset.puzzle_identifiers[dataset.puzzles_of_examples(rows)].astype(np.int64),
        base_ids=base_ids,
    )


def load_identifier_names(root: str | Path, count: int) -> list[str]:
    """identifiers.json names (id -> name); generic names where the file is absent or short."""
    path = Path(root) / "identifiers.json"
    names: list[str] = []
    if path.exists():
        names = read_json(path, "run the convert stage first?")
        if not isinstance(names, list):
            raise UserError(f"{path}: must be a JSON list of names")
        names = [str(name) for name in names]
    return names[:count] + [f"id{i}" for i in range(len(names), count)]


def load_route_task(root: str | Path, metadata: Any) -> RouteTask | None:
    """The cost model from routing.json, or None when the data carries none (route metrics are then skipped)."""
    path = Path(root) / spec.HRM_ROUTING_FILE
    if not path.exists():
        return None
    data = read_json(path, "run the convert stage first?")
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
    if rows * cols > metadata.seq_len:
        raise UserError(f"{path}: rows*cols = {rows * cols} exceeds seq_len {metadata.seq_len}")
    _check_costs(path, data["cost_table"], rows * cols)
    try:
        table = np.asarray(data["cost_table"], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: field 'cost_table' must be a list of integer lists ({err})") from err
    expected = (metadata.num_puzzle_identifiers, spec.VOCAB_SIZE)
    if table.ndim != 2 or table.shape[0] < expected[0] or table.shape[1] != expected[1]:
        raise UserError(
            f"{path}: field 'cost_table' has shape {table.shape}, expected "
            f"[num_puzzle_identifiers={expected[0]}, vocab={expected[1]}]"
        )
    return RouteTask(rows=rows, cols=cols, cost_table=table)


def _check_costs(path: Path, table: Any, cells: int) -> None:
    """Each number in routing.json's cost table is an integer cost: BLOCKED (-1), or 0 up to 2^53 / cells, so a
    route's summed cost (at most every cell once) stays exact in scipy's float64 Dijkstra and in int64. A
    float (1.5 would be truncated), NaN or 1e30 is refused naming its row and column."""
    limit = 2**53 // cells
    for i, row in enumerate(table if isinstance(table, list) else ()):
        for j, cost in enumerate(row if isinstance(row, list) else ()):
            if isinstance(cost, int | float) and not (
                type(cost) is int and (cost == spec.BLOCKED or 0 <= cost <= limit)
            ):
                raise UserError(
                    f"{path}: field 'cost_table' index [{i}][{j}]: {shown(cost)} is not a cost (an integer, "
                    f"{spec.BLOCKED} for barred or 0..{limit}: 2^53 / the {cells} cells, so route sums stay exact)"
                )
