"""Test data for the validate tests: a tiny dataset made by the real generator and converter, and tools to
corrupt it. The tiny config (12x12, 6 + 3 bases, routes of 8+ cells) generates in well under a second."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hrm.data import spec
from hrm.data.conversion import convert
from hrm.data.generation import generate
from tests.conftest import REPO

SMALL_GENERATE = {"rows": 12, "cols": 12, "train_bases": 6, "test_bases": 3, "min_route_length": 8}


def small_params(root: Path) -> dict[str, Any]:
    """The repository's params with a tiny generate config and every path under `root`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["generate"].update(SMALL_GENERATE)
    # small maps: the quick profile's city and difficulty rules (the paper's need 40x40 room to go round)
    quick = params["profiles"]["quick"]["generate"]
    params["generate"]["city"].update(copy.deepcopy(quick["city"]))
    params["generate"]["difficulty"] = copy.deepcopy(quick["difficulty"])
    params["paths"].update(raw=str(root / "raw"), hrm=str(root / "hrm"), data_reports=str(root / "reports"))
    return params


def write_params(root: Path, params: dict[str, Any]) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def load_docs(raw_dir: Path) -> dict[str, Any]:
    return {name: json.loads((raw_dir / name).read_text(encoding="utf-8")) for name in spec.raw_file_names()}


def write_docs(raw_dir: Path, docs: dict[str, Any]) -> None:
    for name, document in docs.items():
        (raw_dir / name).write_text(json.dumps(document), encoding="utf-8")


def make_valid_set(root: Path) -> Path:
    """Generate the tiny dataset and its HRM layout under `root`; returns the params file."""
    params = small_params(root)
    generate.generate(params, root / "raw", progress=False)
    convert.convert(root / "raw", root / "hrm", strict=True)
    return write_params(root, params)


def copy_set(source: Path, target: Path) -> Path:
    """A private copy of a valid set (raw + hrm), with params pointing at the copy."""
    shutil.copytree(source / "raw", target / "raw")
    shutil.copytree(source / "hrm", target / "hrm")
    return write_params(target, small_params(target))


# ---- corruption helpers -----------------------------------------------------------------------------


def split_docs(docs: dict[str, Any], split: str) -> dict[str, Any]:
    """The split's documents keyed by kind (the same objects: edits go into `docs`)."""
    return {kind: docs[name] for kind, name in spec.raw_split_files(split).items()}


def summary_examples(docs: dict[str, Any], split: str) -> list[dict[str, Any]]:
    return docs[spec.RAW_SUMMARY_FILE]["examples"][split]


def remove_example(docs: dict[str, Any], split: str, index: int) -> None:
    """Drop one example (and its one-example puzzle) everywhere, keeping every index file consistent."""
    d = split_docs(docs, split)
    for kind in ("inputs", "labels", "base_scenario_ids", "vehicle_types", "puzzle_identifiers"):
        del d[kind][index]
    n = len(d["inputs"])
    d["puzzle_indices"][:] = list(range(n + 1))
    group_sizes = np.diff(d["group_indices"])
    group = int(np.searchsorted(np.cumsum(group_sizes), index, side="right"))
    group_sizes[group] -= 1
    d["group_indices"][:] = [0, *np.cumsum(group_sizes).tolist()]
    d["dataset"]["mean_puzzle_examples"] = 1.0
    del summary_examples(docs, split)[index]
    docs[spec.RAW_SUMMARY_FILE]["counts"][split]["examples"] -= 1


def deep(docs: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(docs)
