"""Shared by the bench scripts: the `train` section they run with, and a writer of HRM's on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def train_section(**overrides: Any) -> dict[str, Any]:
    """params.yaml's `train` section (the paper values) with the bench's overrides on top."""
    train = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["train"]
    return {**train, **overrides}


def write_layout(
    folder: Path, inputs: np.ndarray, labels: np.ndarray, vocab_size: int, vehicles: int = 4
) -> None:
    """One split in HRM's layout, shaped like ours: each group holds `vehicles` one-example puzzles whose
    identifiers are 1..vehicles; `inputs` and `labels` are [groups * vehicles, seq_len]."""
    examples, seq_len = inputs.shape
    groups = examples // vehicles
    folder.mkdir(parents=True)
    arrays = {
        "inputs": inputs.astype(np.uint8),
        "labels": labels.astype(np.uint8),
        "puzzle_identifiers": np.tile(np.arange(1, vehicles + 1, dtype=np.int32), groups),
        "puzzle_indices": np.arange(examples + 1, dtype=np.int32),
        "group_indices": np.arange(0, examples + 1, vehicles, dtype=np.int32),
    }
    for name, array in arrays.items():
        np.save(folder / f"all__{name}.npy", array)
    meta = {
        "pad_id": 0,
        "ignore_label_id": 0,
        "blank_identifier_id": 0,
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "num_puzzle_identifiers": vehicles + 1,
        "total_groups": groups,
        "mean_puzzle_examples": 1.0,
        "sets": ["all"],
    }
    (folder / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
