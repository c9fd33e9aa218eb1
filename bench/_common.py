"""Shared by the bench scripts: the `train` section they run with, and their data in HRM's on-disk layout
(written by hrm.data.conversion.convert.write_hrm_split, the one writer of that layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hrm.data.conversion.convert import hrm_metadata, write_hrm_split

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def arch_section(**overrides: Any) -> dict[str, Any]:
    """params.yaml's `arch` section (the paper model) with the bench's overrides on top: a key added to the
    model reaches every bench without editing it."""
    arch = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["arch"]
    return {**arch, **overrides}


def train_section(**overrides: Any) -> dict[str, Any]:
    """params.yaml's `train` section (the paper values) with the bench's overrides on top."""
    train = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["train"]
    return {**train, **overrides}


def run_paths(paths: dict[str, str], folder: Path, data: dict[str, str]) -> dict[str, str]:
    """A run's `paths`: its data (`data`: raw, hrm, ...) and every output of train and evaluate under `folder`,
    so runs side by side share the data and nothing else."""
    return {
        **paths,
        **data,
        "checkpoints": str(folder / "checkpoints"),
        "model": str(folder / "model.pt"),
        "train_log": str(folder / "train"),
        "train_timing": str(folder / "timing.json"),
        "eval_reports": str(folder / "eval"),
    }


def write_layout(
    folder: Path, inputs: np.ndarray, labels: np.ndarray, vocab_size: int, vehicles: int = 4
) -> None:
    """One split in HRM's layout, shaped like ours: each group holds `vehicles` one-example puzzles whose
    identifiers are 1..vehicles; `inputs` and `labels` are [groups * vehicles, seq_len]."""
    examples = inputs.shape[0]
    groups = examples // vehicles
    arrays = {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.tile(np.arange(1, vehicles + 1), groups),
        "puzzle_indices": np.arange(examples + 1),
        "group_indices": np.arange(0, examples + 1, vehicles),
    }
    write_hrm_split(folder, arrays, hrm_metadata(arrays, vocab_size, vehicles + 1))


def write_random_routing_layout(folder: Path, groups: int, side: int, seed: int = 0) -> None:
    """`groups` x 4 random side x side grids of our vocabulary (no PAD) in our layout, labels = inputs:
    the shapes of the routing data for timing and memory, not its content."""
    from hrm.data.spec import VOCAB_SIZE

    inputs = np.random.default_rng(seed).integers(
        1, VOCAB_SIZE - 1, size=(groups * 4, side * side), dtype=np.uint8
    )
    write_layout(folder, inputs, inputs.copy(), vocab_size=VOCAB_SIZE)
