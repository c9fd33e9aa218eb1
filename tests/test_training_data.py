"""Sampler and reader semantics of hrm.training.data against HRM's loader rules."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from hrm_layout import write_dataset, write_split

from hrm.io import UserError
from hrm.training.data import IGNORE_LABEL, PuzzleDataset, TrainSampler, eval_batches, planned_steps


@pytest.fixture()
def data_root(tmp_path):
    return write_dataset(tmp_path / "data")


def drain(sampler: TrainSampler) -> list[tuple[np.ndarray, np.ndarray]]:
    batches = []
    while (drawn := sampler.next_global()) is not None:
        batches.append(drawn)
    return batches


def test_reader_casts_and_maps_ignore_label(data_root):
    dataset = PuzzleDataset(data_root, "train")
    assert isinstance(dataset.inputs, np.memmap)
    batch = dataset.collate(np.array([0, 1]), dataset.puzzles_of_examples(np.array([0, 1])), pad_to=2)
    assert batch["inputs"].dtype == torch.int32 and batch["labels"].dtype == torch.int64
    assert batch["puzzle_identifiers"].dtype == torch.int32
    assert torch.equal(
        batch["labels"], torch.from_numpy(dataset.labels[:2].astype(np.int64))
    )  # no label is 0


def test_ignore_label_becomes_minus_100_only_when_set(tmp_path):
    for ignore, expect_ignored in ((0, True), (None, False)):
        root = tmp_path / str(ignore)
        write_split(root, "train", [[2]], ignore_label_id=ignore)
        labels = np.load(root / "train" / "all__labels.npy")
        labels[0, :3] = 0
        np.save(root / "train" / "all__labels.npy", labels)
        batch = PuzzleDataset(root, "train").collate(np.array([0]), np.array([0]), pad_to=1)
        assert bool((batch["labels"][0, :3] == IGNORE_LABEL).all()) is expect_ignored
        assert bool((batch["labels"][0, :3] == 0).all()) is not expect_ignored


def test_one_puzzle_per_group_per_epoch_exact_batches_drop_last(data_root):
    dataset = PuzzleDataset(data_root, "train")
    batch_size = 4
    sampler = TrainSampler(dataset, global_batch_size=batch_size, epochs_per_iteration=1, seed=7)
    batches = drain(sampler)
    assert all(len(examples) == batch_size for examples, _ in batches)
    puzzles = np.concatenate([p for _, p in batches])
    examples = np.concatenate([e for e, _ in batches])
    # every example belongs to the puzzle it is labelled with
    assert np.array_equal(dataset.puzzles_of_examples(examples), puzzles)
    groups = np.searchsorted(dataset.group_indices, puzzles, side="right") - 1
    # within one epoch a group gives one puzzle only (its examples may split over two batches)
    per_group = {g: set(puzzles[groups == g]) for g in np.unique(groups)}
    assert all(len(chosen) == 1 for chosen in per_group.values())
    # only the dropped tail (fewer than a batch of examples, so fewer groups) is missing from the epoch
    assert len(per_group) >= dataset.num_groups - (batch_size - 1)
    assert sampler.next_global() is None


def test_every_group_used_once_per_epoch_over_iteration():
    # one example per puzzle: the examples of an iteration are exactly epochs x groups, minus the dropped tail
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(tmp), "train", [[1, 1, 1, 1]] * 10)
        dataset = PuzzleDataset(tmp, "train")
        sampler = TrainSampler(dataset, global_batch_size=6, epochs_per_iteration=3, seed=1)
        batches = drain(sampler)
        assert len(batches) == (3 * 10) // 6
        groups = (
            np.searchsorted(dataset.group_indices, np.concatenate([p for _, p in batches]), side="right") - 1
        )
        assert Counter(groups.tolist()) == Counter({g: 3 for g in range(10)})
        # 31 groups with batch 6 -> 5 batches and one group dropped
        sampler = TrainSampler(dataset, global_batch_size=7, epochs_per_iteration=3, seed=1)
        assert len(drain(sampler)) == 30 // 7


def test_same_seed_same_batches_other_seed_other_batches(data_root):
    dataset = PuzzleDataset(data_root, "train")
    run = [drain(TrainSampler(dataset, 4, 5, seed=3)) for _ in range(2)]
    other = drain(TrainSampler(dataset, 4, 5, seed=4))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(*run, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(run[0], other, strict=False))
    # the next iteration is a different order
    sampler = TrainSampler(dataset, 4, 5, seed=3)
    sampler.start_iteration(1)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(run[0], drain(sampler), strict=False))


def test_state_restore_continues_identically(data_root):
    dataset = PuzzleDataset(data_root, "train")
    reference = drain(TrainSampler(dataset, 5, 4, seed=11))
    sampler = TrainSampler(dataset, 5, 4, seed=11)
    head = [sampler.next_global() for _ in range(3)]
    state = sampler.state_dict()
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = TrainSampler(dataset, 5, 4, seed=11)
    restored.next_global()  # the fresh sampler's own position must not leak into the restored one
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    tail = drain(restored)
    assert len(head) + len(tail) == len(reference)
    for (a, pa), (b, pb) in zip(head + tail, reference, strict=True):
        assert np.array_equal(a, b) and np.array_equal(pa, pb)


def test_rank_slices_tile_the_global_batch(data_root):
    dataset = PuzzleDataset(data_root, "train")
    whole = TrainSampler(dataset, 6, 2, seed=5).next_batch()
    parts = [TrainSampler(dataset, 6, 2, seed=5, rank=r, world_size=3).next_batch() for r in range(3)]
    for key in whole:
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
    with pytest.raises(UserError, match="multiple"):
        TrainSampler(dataset, 7, 2, seed=5, rank=0, world_size=2)


def test_eval_batches_in_order_last_padded(data_root):
    dataset = PuzzleDataset(data_root, "test")  # 10 examples
    batches = list(eval_batches(dataset, 4))
    assert [b["inputs"].shape[0] for b in batches] == [4, 4, 4]
    inputs = torch.cat([b["inputs"] for b in batches])
    assert torch.equal(inputs[:10], torch.from_numpy(dataset.inputs[:].astype(np.int32)))
    assert bool((inputs[10:] == 0).all())
    last = batches[-1]
    assert bool((last["labels"][2:] == IGNORE_LABEL).all()) and bool(
        (last["labels"][:2] != IGNORE_LABEL).all()
    )
    assert last["puzzle_identifiers"][2:].tolist() == [0, 0]
    assert torch.equal(
        torch.cat([b["puzzle_identifiers"] for b in batches])[:10],
        torch.from_numpy(dataset.puzzle_identifiers),
    )
    # two ranks: each takes its slice of every global chunk, padded to the local size
    ranks = [list(eval_batches(dataset, 4, rank=r, world_size=2)) for r in range(2)]
    for i, whole in enumerate(batches):
        assert torch.equal(torch.cat([ranks[0][i]["inputs"], ranks[1][i]["inputs"]]), whole["inputs"])


def test_planned_steps_matches_hrm_formula(data_root):
    meta = PuzzleDataset(data_root, "train").metadata
    assert planned_steps(meta, 10, 4) == int(10 * meta.total_groups * meta.mean_puzzle_examples / 4)
    from hrm.training.data import DatasetMetadata

    ours = DatasetMetadata(0, 0, 0, 24, 1600, 5, 240, 1.0, ["all"])
    assert planned_steps(ours, 50000, 384) == 31250


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("puzzle_indices", "decreasing", "all__puzzle_indices.npy: field 'puzzle_indices' index 2: "),
        ("group_indices", "wrong_end", "all__group_indices.npy: field 'group_indices' index \\d+: ends at"),
        (
            "puzzle_identifiers",
            "too_big",
            "all__puzzle_identifiers.npy: field 'puzzle_identifiers' index 1: 99",
        ),
        ("inputs", "token", "all__inputs.npy: field 'inputs' index 3, position 0: token 200"),
        ("dataset.json", "missing", "field 'seq_len' is missing"),
    ],
)
def test_bad_data_names_file_field_index(tmp_path, field, value, message):
    root = write_dataset(tmp_path / "d")
    folder = root / "train"
    if field == "dataset.json":
        meta = json.loads((folder / "dataset.json").read_text())
        del meta["seq_len"]
        (folder / "dataset.json").write_text(json.dumps(meta))
    else:
        array = np.load(folder / f"all__{field}.npy")
        if value == "decreasing":
            array[2] = array[1] - 1 if array[1] > 0 else 0
            array[1] = array[2] + 1
        elif value == "wrong_end":
            array[-1] += 1
        elif value == "too_big":
            array[1] = 99
        elif value == "token":
            array[3, 0] = 200
        np.save(folder / f"all__{field}.npy", array)
    with pytest.raises(UserError, match=message.replace(".npy", r"\.npy")):
        PuzzleDataset(root, "train")
