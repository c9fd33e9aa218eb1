"""HRM's on-disk dataset layout (``dataset.json`` + ``<set>__<field>.npy``, so official Maze/Sudoku sets load
as they are): checked reader, training sampler, eval batches. Sampling follows HRM's loader, but every draw
comes from a seeded generator whose state can be saved and restored (HRM's uses numpy's unseeded global RNG)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import spec, structure
from hrm.io import UserError, read_json, read_npy

IGNORE_LABEL = -100  # what PyTorch's cross-entropy and HRM's loss head skip


@dataclass(frozen=True)
class DatasetMetadata:
    """HRM's PuzzleDatasetMetadata (``dataset.json``); keys HRM does not know (rows, cols) go to ``extra``."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> DatasetMetadata:
        raw = read_json(path, "is the HRM data folder built? run `dvc repro convert`")
        if not isinstance(raw, dict):
            raise UserError(f"{path}: top level must be an object")
        values: dict[str, Any] = {}
        for name, kinds in spec.HRM_METADATA_FIELDS.items():
            if name not in raw:
                raise UserError(f"{path}: field '{name}' is missing")
            values[name] = raw[name]
            if isinstance(raw[name], bool) or not isinstance(raw[name], kinds):
                raise UserError(f"{path}: field '{name}' has the wrong type ({type(raw[name]).__name__})")
        if not values["sets"] or not all(isinstance(s, str) for s in values["sets"]):
            raise UserError(f"{path}: field 'sets' must be a non-empty list of names")
        for name in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
            if values[name] < 1:
                raise UserError(f"{path}: field '{name}' must be >= 1, got {values[name]}")
        values["mean_puzzle_examples"] = float(values["mean_puzzle_examples"])
        return cls(**values, extra={k: v for k, v in raw.items() if k not in spec.HRM_METADATA_FIELDS})


class PuzzleDataset:
    """One split of an HRM data folder; inputs/labels memory-mapped, the index arrays in memory, all checked."""

    def __init__(self, root: str | Path, split: str):
        self.root, self.split = Path(root), split
        self.folder = self.root / split
        self.metadata = DatasetMetadata.from_file(self.folder / "dataset.json")
        if len(self.metadata.sets) != 1:
            # Several sets would need a set index in the sampler state; no HRM builder writes more than one.
            raise UserError(
                f"{self.folder / 'dataset.json'}: field 'sets' lists {self.metadata.sets}; only one set is supported"
            )
        self.set_name = self.metadata.sets[0]
        self.inputs: np.ndarray = self._load("inputs")
        self.labels: np.ndarray = self._load("labels")
        self.puzzle_identifiers: np.ndarray = self._load("puzzle_identifiers").astype(np.int64)
        self.puzzle_indices: np.ndarray = self._load("puzzle_indices").astype(np.int64)
        self.group_indices: np.ndarray = self._load("group_indices").astype(np.int64)
        self._check()

    def file(self, name: str) -> Path:
        return self.folder / f"{self.set_name}__{name}.npy"

    def _load(self, name: str) -> np.ndarray:
        path = self.file(name)
        array = read_npy(path, mmap=name in ("inputs", "labels"))
        if not np.issubdtype(array.dtype, np.integer):
            raise UserError(f"{path}: dtype {array.dtype} is not an integer type")
        return array

    def _check(self) -> None:
        """Every structural fact the sampler relies on, by the rules convert and validate use
        (`hrm.data.structure`): the first problem names the file, the field and the index."""
        meta, metadata_file = self.metadata, self.folder / "dataset.json"
        for name, array in (("inputs", self.inputs), ("labels", self.labels)):
            if array.ndim != 2:
                raise UserError(
                    f"{self.file(name)}: field '{name}' has shape {list(array.shape)}, expected [N, seq_len]"
                )
        if self.inputs.shape[0] == 0:  # nothing to train on, or every eval metric a mean of nothing (NaN)
            raise UserError(f"{metadata_file}: the {self.split} split holds no examples")
        kinds = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
        arrays = [getattr(self, kind) for kind in kinds]
        problems = structure.split_problems({kind: self.file(kind) for kind in kinds}, *arrays)
        truth = {"seq_len": self.inputs.shape[1]}
        if not problems:
            truth["total_groups"] = self.num_groups
        problems += structure.metadata_problems(metadata_file, vars(meta), truth)
        problems += structure.identifier_problems(
            self.file("puzzle_identifiers"),
            self.puzzle_identifiers,
            meta.num_puzzle_identifiers,
            "identifiers.json",
        )
        for name, array in (("inputs", self.inputs), ("labels", self.labels)):
            problems += structure.token_problems(self.file(name), name, array, range(meta.vocab_size))
        structure.raise_first(problems)

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group_indices.shape[0] - 1)

    def puzzles_of_examples(self, example_indices: np.ndarray) -> np.ndarray:
        """Index of the puzzle that owns each example row."""
        return np.searchsorted(self.puzzle_indices, example_indices, side="right") - 1

    def rows(self, start: int, stop: int, pad_to: int) -> dict[str, Any]:
        """Examples [start, stop) in order as a batch padded to `pad_to` (eval batches, the memory probe)."""
        examples = np.arange(start, stop, dtype=np.int64)
        return self.collate(examples, self.puzzles_of_examples(examples), pad_to=pad_to)

    def collate(self, example_indices: np.ndarray, puzzle_indices: np.ndarray, pad_to: int) -> dict[str, Any]:
        """Torch batch of the model contract; rows beyond the examples are padding that no metric counts."""
        import torch

        example_indices = np.asarray(example_indices, dtype=np.int64)
        inputs = np.asarray(self.inputs[example_indices], dtype=np.int32)
        labels = np.asarray(self.labels[example_indices], dtype=np.int64)
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL
        identifiers = self.puzzle_identifiers[np.asarray(puzzle_indices, dtype=np.int64)].astype(np.int32)
        pad = pad_to - len(example_indices)
        if pad < 0:
            raise ValueError(f"batch of {len(example_indices)} rows does not fit pad_to={pad_to}")
        if pad:
            inputs = np.concatenate([inputs, np.full((pad, inputs.shape[1]), self.metadata.pad_id, np.int32)])
            labels = np.concatenate([labels, np.full((pad, labels.shape[1]), IGNORE_LABEL, np.int64)])
            identifiers = np.concatenate(
                [identifiers, np.full(pad, self.metadata.blank_identifier_id, np.int32)]
            )
        return {
            "inputs": torch.from_numpy(np.ascontiguousarray(inputs)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels)),
            "puzzle_identifiers": torch.from_numpy(np.ascontiguousarray(identifiers)),
        }


def check_batch_split(global_batch_size: int, world_size: int) -> int:
    """Rows per rank; every rank takes an equal slice of the same global batch."""
    if global_batch_size < 1:
        raise UserError(f"params.yaml: train.global_batch_size must be >= 1, got {global_batch_size}")
    if global_batch_size % world_size:
        raise UserError(
            f"params.yaml: train.global_batch_size {global_batch_size} is not a multiple of the "
            f"{world_size} processes"
        )
    return global_batch_size // world_size


SAMPLER_SETTINGS = (
    "seed",
    "global_batch_size",
    "epochs_per_iteration",
)  # a checkpoint's must equal the run's


class TrainSampler:
    """HRM's training order, restorable: iteration i (``eval_interval`` epochs, last partial batch dropped)
    draws from a generator seeded ``(seed, i)``; each epoch permutes the groups, each group gives a random
    puzzle and from it up to the batch's remaining room of examples. Generator state + cursor: the state."""

    def __init__(
        self,
        dataset: PuzzleDataset,
        global_batch_size: int,
        epochs_per_iteration: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.dataset, self.global_batch_size, self.seed, self.rank = dataset, global_batch_size, seed, rank
        self.local_batch_size = check_batch_split(global_batch_size, world_size)
        if epochs_per_iteration < 1:
            raise UserError(f"params.yaml: train.eval_interval must be >= 1, got {epochs_per_iteration}")
        self.epochs_per_iteration = epochs_per_iteration
        self.start_iteration(0)

    def start_iteration(self, iteration: int) -> None:
        self.iteration = iteration
        self.epoch = 0  # within the iteration
        self.cursor = 0  # position in the current epoch's group order
        self.exhausted = False
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, iteration])))
        self.order = self.rng.permutation(self.dataset.num_groups)

    def next_global(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(example rows, their puzzle indices) of the next full global batch, or None: iteration over."""
        if self.exhausted:
            return None
        dataset = self.dataset
        examples: list[np.ndarray] = []
        puzzles: list[np.ndarray] = []
        room = self.global_batch_size
        while room > 0:
            if self.cursor == self.order.shape[0]:
                if self.epoch + 1 == self.epochs_per_iteration:
                    self.exhausted = True
                    return None  # the partial batch is dropped, as in HRM
                self.epoch += 1
                self.cursor = 0
                self.order = self.rng.permutation(dataset.num_groups)
            group = int(self.order[self.cursor])
            self.cursor += 1
            first, last = dataset.group_indices[group], dataset.group_indices[group + 1]
            if last == first:
                continue  # an empty group gives nothing
            puzzle = int(self.rng.integers(first, last))
            start, stop = int(dataset.puzzle_indices[puzzle]), int(dataset.puzzle_indices[puzzle + 1])
            take = min(stop - start, room)
            if take == 0:
                continue
            examples.append(start + self.rng.choice(stop - start, take, replace=False))
            puzzles.append(np.full(take, puzzle, dtype=np.int64))
            room -= take
        return np.concatenate(examples), np.concatenate(puzzles)

    def next_batch(self) -> dict[str, Any] | None:
        """This rank's slice of the next global batch as a torch batch, or None when the iteration is over."""
        drawn = self.next_global()
        if drawn is None:
            return None
        examples, puzzles = drawn
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        return self.dataset.collate(examples[lo:hi], puzzles[lo:hi], pad_to=self.local_batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Plain values and a tensor only, so checkpoints load with ``torch.load(weights_only=True)``."""
        import torch

        names = (*SAMPLER_SETTINGS, "iteration", "epoch", "cursor", "exhausted")
        return {name: getattr(self, name) for name in names} | {
            "order": torch.from_numpy(self.order.astype(np.int64)),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in SAMPLER_SETTINGS:
            if state[name] != getattr(self, name):
                raise UserError(
                    f"checkpoint sampler has {name}={state[name]}, these params give {getattr(self, name)}"
                )
        self.iteration, self.epoch, self.cursor = (
            int(state[name]) for name in ("iteration", "epoch", "cursor")
        )
        self.exhausted = bool(state["exhausted"])
        self.order = state["order"].numpy().astype(np.int64)
        if self.order.shape[0] != self.dataset.num_groups:
            raise UserError("checkpoint sampler state does not match the dataset's group count")
        self.rng = np.random.Generator(np.random.PCG64())
        self.rng.bit_generator.state = state["rng"]


def eval_batches(
    dataset: PuzzleDataset, global_batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[dict[str, Any]]:
    """Examples in order, in global chunks; this rank's slice of each, the last chunk padded."""
    local = check_batch_split(global_batch_size, world_size)
    for chunk_start in range(0, dataset.num_examples, global_batch_size):
        chunk_end = min(chunk_start + global_batch_size, dataset.num_examples)
        lo = min(chunk_start + rank * local, chunk_end)
        yield dataset.rows(lo, min(chunk_start + (rank + 1) * local, chunk_end), pad_to=local)


def planned_steps(metadata: DatasetMetadata, epochs: int, global_batch_size: int) -> int:
    """HRM's step count: epochs x groups x mean examples per puzzle / batch."""
    return int(epochs * metadata.total_groups * metadata.mean_puzzle_examples / global_batch_size)
