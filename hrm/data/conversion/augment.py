"""Dihedral augmentation of the train split (`convert.augment: dihedral`), as HRM's maze builder's `--aug`.

Every train example under the 8 symmetries of the square; the test split is never augmented. Labels stay
right because costs depend on the token only (no one-way streets) and every symmetry maps 4-neighbours onto
4-neighbours; convert and validate still re-check every transformed route with the independent Dijkstra.
Layout: each (transform, puzzle) is its own puzzle in its base's group, keeping vehicle and base id (HRM's
sampler then sees a random symmetry of a random vehicle each epoch); within a group transform-major, so the
first puzzles are the originals.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from hrm.config import ConfigError
from hrm.data.conversion.raw import RawSplit
from hrm.data.facts import example_facts

CHOICES = ("none", "dihedral")
TRANSFORMS = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip_left_right",
    "flip_up_down",
    "transpose",
    "anti_transpose",
)
# The symmetries that map a rows x cols map onto a rows x cols map when rows != cols.
SHAPE_KEEPING = (0, 2, 4, 5)
LAYOUT_KEY = "augment"  # extra key of the augmented train/dataset.json (HRM's readers ignore unknown keys)


def parse(value: Any) -> str:
    if value not in CHOICES:
        raise ConfigError(f"params.yaml: convert.augment must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


def transforms_for(augment: str, rows: int, cols: int) -> tuple[int, ...]:
    """Transform indices the setting asks for on a rows x cols map; refuses dihedral on a non-square map."""
    if parse(augment) == "none":
        return (0,)
    if rows != cols:
        kept = ", ".join(TRANSFORMS[t] for t in SHAPE_KEEPING)
        raise ConfigError(
            f"params.yaml: convert.augment: dihedral needs square maps, these are {rows} x {cols}: the "
            f"90/270-degree rotations and the diagonal reflections would turn them into {cols} x {rows}. "
            f"Only {kept} keep the shape, which is not the 8x augmentation asked for; set "
            "convert.augment: none (or generate.rows = generate.cols)."
        )
    return tuple(range(len(TRANSFORMS)))


# each transform on [N, rows, cols] maps, in TRANSFORMS order
_MAPPINGS = (
    lambda maps: maps,
    lambda maps: np.rot90(maps, k=1, axes=(1, 2)),
    lambda maps: np.rot90(maps, k=2, axes=(1, 2)),
    lambda maps: np.rot90(maps, k=3, axes=(1, 2)),
    lambda maps: maps[:, :, ::-1],
    lambda maps: maps[:, ::-1, :],
    lambda maps: maps.transpose(0, 2, 1),
    lambda maps: np.rot90(maps, k=2, axes=(1, 2)).transpose(0, 2, 1),
)


def transform_grids(grids: np.ndarray, rows: int, cols: int, transform: int) -> np.ndarray:
    """[N, rows*cols] row-major grids under one symmetry, same shape and dtype."""
    maps = np.asarray(grids).reshape(-1, rows, cols)
    if transform not in SHAPE_KEEPING and rows != cols:
        raise ValueError(f"{TRANSFORMS[transform]} needs a square map, got {rows} x {cols}")
    return np.ascontiguousarray(_MAPPINGS[transform](maps)).reshape(len(maps), rows * cols)


def augment_split(
    split: RawSplit, rows: int, cols: int, transforms: tuple[int, ...]
) -> tuple[RawSplit, np.ndarray]:
    """The split with each group's puzzles repeated once per transform (transform-major), and the transform
    index of each new example. Per-example fields follow their source example."""
    source, example_transform, puzzles = [], [], []
    puzzle_offsets, group_offsets = [0], [0]
    for g in range(len(split.group_indices) - 1):
        for t in transforms:
            for p in range(int(split.group_indices[g]), int(split.group_indices[g + 1])):
                examples = range(int(split.puzzle_indices[p]), int(split.puzzle_indices[p + 1]))
                source.extend(examples)
                example_transform.extend([t] * len(examples))
                puzzles.append(p)
                puzzle_offsets.append(len(source))
        group_offsets.append(len(puzzles))
    transform = np.asarray(example_transform, dtype=np.int64)
    grids = {}
    for name in ("inputs", "labels"):
        grid = getattr(split, name)[np.asarray(source, dtype=np.int64)]
        for t in set(transforms) - {0}:
            grid[transform == t] = transform_grids(grid[transform == t], rows, cols, t)
        grids[name] = grid
    augmented = replace(
        split,
        **grids,
        base_scenario_ids=[split.base_scenario_ids[i] for i in source],
        vehicle_types=[split.vehicle_types[i] for i in source],
        puzzle_identifiers=split.puzzle_identifiers[np.asarray(puzzles, dtype=np.int64)],
        puzzle_indices=np.asarray(puzzle_offsets, dtype=np.int64),
        group_indices=np.asarray(group_offsets, dtype=np.int64),
    )
    return augmented, transform


def transformed_route_failures(
    augmented: RawSplit, transform: np.ndarray, cost_table: np.ndarray, rows: int, cols: int
) -> tuple[list[str], int]:
    """Every transformed example of `augment_split`'s output (transform != 0) re-checked by the independent
    Dijkstra (convert and validate): (a description of each whose label is not the valid, unique optimal
    route of its transformed map, the number checked)."""
    moved = np.flatnonzero(transform != 0)
    n = len(moved)
    if n == 0:
        return [], 0
    single = RawSplit(  # one puzzle per example, in one group: all example_facts needs
        name="train",
        metadata={},
        inputs=np.asarray(augmented.inputs[moved]),
        labels=np.asarray(augmented.labels[moved]),
        puzzle_identifiers=np.asarray(augmented.example_identifier[moved], dtype=np.int64),
        puzzle_indices=np.arange(n + 1, dtype=np.int64),
        group_indices=np.array([0, n], dtype=np.int64),
        base_scenario_ids=[""] * n,
        vehicle_types=[""] * n,
    )
    facts = example_facts(single, cost_table, rows, cols)
    good = facts.route_valid & (facts.route_cost == facts.optimal_cost) & facts.route_unique
    described = [
        f"train example {int(i)} (base {augmented.base_scenario_ids[i]}, {augmented.vehicle_types[i]}, "
        f"{TRANSFORMS[transform[i]]})"
        for i in moved[~good]
    ]
    return described, n
