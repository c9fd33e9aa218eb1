"""Tiny synthetic datasets in HRM's layout, built inside tests (no pipeline run needed).

Task: label[i] = (input[i] + puzzle_identifier - 1) % (vocab - 1) + 1, so a model must read both the grid and
its puzzle embedding; no label is 0, so with ignore_label_id 0 every cell counts (as in our routing data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hrm.data.conversion.convert import hrm_metadata, write_hrm_split


def write_split(
    root: Path,
    split: str,
    examples_per_puzzle: list[list[int]],
    seq_len: int = 8,
    vocab_size: int = 6,
    num_puzzle_identifiers: int = 4,
    seed: int = 0,
    ignore_label_id: int | None = 0,
) -> Path:
    """One split; `examples_per_puzzle[g][p]` = examples of puzzle p in group g."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    inputs, labels, identifiers, puzzle_indices, group_indices = [], [], [], [0], [0]
    for group in examples_per_puzzle:
        for count in group:
            ident = int(rng.integers(1, num_puzzle_identifiers))
            for _ in range(count):
                grid = rng.integers(1, vocab_size, size=seq_len)
                inputs.append(grid)
                labels.append((grid + ident - 1) % (vocab_size - 1) + 1)
            identifiers.append(ident)
            puzzle_indices.append(puzzle_indices[-1] + count)
        group_indices.append(len(identifiers))
    arrays = {
        "inputs": np.array(inputs),
        "labels": np.array(labels),
        "puzzle_identifiers": np.array(identifiers),
        "puzzle_indices": np.array(puzzle_indices),
        "group_indices": np.array(group_indices),
    }
    metadata = hrm_metadata(arrays, vocab_size, num_puzzle_identifiers, ignore_label_id=ignore_label_id)
    write_hrm_split(folder, arrays, metadata)
    return folder


def write_dataset(root: Path, train_groups: int = 12, test_examples: int = 10, **kwargs) -> Path:
    """Train: `train_groups` groups of 1-3 puzzles of 1-3 examples; test: one example per puzzle and group."""
    rng = np.random.default_rng(123)
    train = [[int(rng.integers(1, 4)) for _ in range(int(rng.integers(1, 4)))] for _ in range(train_groups)]
    write_split(root, "train", train, seed=1, **kwargs)
    write_split(root, "test", [[1]] * test_examples, seed=2, **kwargs)
    (Path(root) / "identifiers.json").write_text(json.dumps(["<blank>", "a", "b", "c"]), encoding="utf-8")
    return Path(root)
