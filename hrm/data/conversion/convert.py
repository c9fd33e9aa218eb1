"""The convert stage: the 18 raw JSON files -> HRM's on-disk layout (`paths.hrm`; docs/design.md, HRM layout).

Metadata is computed from the arrays, never copied from the input's claims, so it cannot contradict them.
The folder is built beside the target and swapped in only when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hrm import io
from hrm.config import ConfigError, load_params, section
from hrm.data import spec
from hrm.data.conversion import augment as augmentation
from hrm.data.conversion import raw
from hrm.data.generation.generate import readable_folder

# the split arrays written as read (base ids and vehicle names are mapped to int32 ids)
SPLIT_ARRAYS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
STANDARD_VEHICLES = ("bike", "car", "van", "truck")  # the original tool's easy/normal/hard/expert


def hrm_metadata(
    arrays: dict[str, np.ndarray],
    vocab_size: int,
    num_identifiers: int,
    ignore_label_id: int | None = spec.PAD,
) -> dict[str, Any]:
    """HRM's PuzzleDatasetMetadata, every number taken from the split's arrays."""
    puzzles = len(arrays["puzzle_identifiers"])
    mean_examples = len(arrays["inputs"]) / puzzles if puzzles else 0.0
    seq_len, groups = int(np.shape(arrays["inputs"])[1]), len(arrays["group_indices"]) - 1
    return spec.hrm_metadata(seq_len, num_identifiers, groups, mean_examples, vocab_size, ignore_label_id)


def metadata_for_settings(generate: dict[str, Any]) -> dict[str, Any]:
    """The train split's metadata that convert writes for these `generate` settings, without the data: one
    puzzle of one example per base and vehicle, seq_len rows x cols, the blank identifier plus one per vehicle
    (the doctor's plan and the budget curves' FLOPs before or without a conversion)."""
    seq_len = int(generate["rows"]) * int(generate["cols"])
    return spec.hrm_metadata(seq_len, len(generate["vehicles"]) + 1, int(generate["train_bases"]))


def write_hrm_split(folder: Path, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """One split of HRM's on-disk layout: `all__<name>.npy` per array in HRM's dtypes (uint8 grids, int32
    indices and ids) and `dataset.json`. The one writer of the layout (convert, test and bench data)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        dtype = np.uint8 if name in ("inputs", "labels") else np.int32
        np.save(folder / f"{spec.HRM_SET}__{name}.npy", np.asarray(array, dtype=dtype), allow_pickle=False)
    io.atomic_write_json(folder / "dataset.json", metadata, indent=1)
    return folder


def base_indices(base_ids: list[str]) -> np.ndarray:
    """Base scenario id -> int32 index in order of first appearance (ours: "train-0007" -> 7)."""
    order: dict[str, int] = {}
    return np.array([order.setdefault(base, len(order)) for base in base_ids], dtype=np.int32)


def vehicle_ids(vehicles: list[str], identifiers: list[str]) -> np.ndarray:
    """Vehicle name -> int32 id: its index in identifiers.json; the original tool's names map to
    bike/car/van/truck = 1..4 when its identifiers do not list them; 0 when unknown."""
    ids = []
    for name in vehicles:
        if name in identifiers:
            ids.append(identifiers.index(name))
            continue
        standard = raw.ORIGINAL_VEHICLES.get(name, name)
        ids.append(STANDARD_VEHICLES.index(standard) + 1 if standard in STANDARD_VEHICLES else 0)
    return np.array(ids, dtype=np.int32)


def convert(
    raw_dir: str | Path, out_dir: str | Path, strict: bool = True, augment: str = "none"
) -> dict[str, Any]:
    """Convert `raw_dir` into `out_dir`; returns a small report (source, counts, issues converted past).
    `augment` = "dihedral": the train split under the 8 symmetries, each transformed route checked first."""
    dataset = raw.read_raw(raw_dir)
    if strict and dataset.issues:
        listed = "\n".join(f"  - {issue}" for issue in dataset.issues)
        raise io.UserError(
            f"convert (strict): {dataset.folder} fails validation ({len(dataset.issues)} problems):\n{listed}\n"
            "Nothing was written. To convert these files anyway, with the seq_len and vocabulary their arrays "
            "really have, run with --no-strict (or set convert.strict: false)."
        )
    splits = dict(dataset.splits)
    if augmentation.parse(augment) != "none":
        splits["train"] = _augmented_train(dataset, augment)
    with io.staged_directory(out_dir) as staging:
        readable_folder(staging)
        io.atomic_write_json(staging / "identifiers.json", dataset.identifiers)
        if dataset.cost_model is not None:
            routing_doc = dataset.cost_model.to_dict() | {"rows": dataset.rows, "cols": dataset.cols}
            io.atomic_write_json(staging / spec.HRM_ROUTING_FILE, routing_doc, indent=1)
        for name, split in splits.items():
            arrays = {field: getattr(split, field) for field in SPLIT_ARRAYS} | {
                "base_scenario_ids": base_indices(split.base_scenario_ids),
                "vehicle_types": vehicle_ids(split.vehicle_types, dataset.identifiers),
            }
            metadata = hrm_metadata(arrays, dataset.vocab_size, len(dataset.identifiers))
            if name == "train" and augment != "none":
                metadata[augmentation.LAYOUT_KEY] = augment
            write_hrm_split(staging / name, arrays, metadata)
    return {
        "source": dataset.source,
        "out_dir": str(out_dir),
        "seq_len": dataset.seq_len,
        "vocab_size": dataset.vocab_size,
        "rows": dataset.rows,
        "cols": dataset.cols,
        "counts": {
            name: {"examples": s.num_examples, "puzzles": s.num_puzzles, "groups": s.num_groups}
            for name, s in splits.items()
        },
        "augment": augment,
        "issues": list(dataset.issues),
    }


def _augmented_train(dataset: raw.RawDataset, augment: str) -> raw.RawSplit:
    """The train split under every transform, each transformed route re-checked by the independent Dijkstra."""
    if dataset.cost_model is None or dataset.rows is None or dataset.cols is None:
        raise io.UserError(
            f"convert.augment: {augment} re-checks every transformed route, which needs the cost model and the "
            f"map shape; {dataset.folder} was written by the original tool and has neither. Set convert.augment: none."
        )
    rows, cols = dataset.rows, dataset.cols
    transforms = augmentation.transforms_for(augment, rows, cols)
    augmented, transform = augmentation.augment_split(dataset.splits["train"], rows, cols, transforms)
    bad, _ = augmentation.transformed_route_failures(
        augmented, transform, dataset.cost_model.cost_table(), rows, cols
    )
    if bad:
        listed = "\n".join(f"  - {example}" for example in bad[:5])
        raise io.UserError(
            f"convert.augment: {len(bad)} transformed train example(s) of {dataset.folder} are not the unique "
            f"optimal route of their transformed map:\n{listed}\nNothing was written."
        )
    return augmented


def run(params_path: str | Path = "params.yaml", strict: bool | None = None) -> dict[str, Any]:
    """Stage entry point: `paths.raw` -> `paths.hrm`; `strict` overrides `convert.strict`."""
    try:
        params = load_params(params_path)
        paths = section(params, "paths", params_path)
        settings = section(params, "convert", params_path)
        augment = augmentation.parse(settings.get("augment", "none"))
    except ConfigError as err:
        raise io.UserError(str(err)) from err
    strict = settings["strict"] if strict is None else strict
    return convert(paths["raw"], paths["hrm"], strict=strict, augment=augment)
