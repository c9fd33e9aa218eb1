"""Tiny params and result readers shared by the trainer tests."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from hrm.config import deep_merge
from tests.conftest import repo_params, tiny_arch

# The tiny profile's model, with what the trainer tests depend on: two H and L cycles (a segment has no-grad
# cycles before the one-step-gradient one), halting with exploration on (halt_max_steps 3, so an exploring row's
# minimum of 2 or 3 segments differs from the maximum; exploration 0.5, so 8 rows show it), float32 on any
# device (runs compare bit for bit), and expansion 2 (smaller MLPs: these tests run whole trainings).
TINY_ARCH = tiny_arch(
    H_cycles=2,
    L_cycles=2,
    expansion=2,
    halt_max_steps=3,
    halt_exploration_prob=0.5,
    forward_dtype="float32",
)

TINY_TRAIN = {
    "seed": 3,
    "global_batch_size": 4,
    "epochs": 6,
    "eval_interval": 2,
    "lr": 1.0e-3,
    "lr_min_ratio": 1.0,
    "lr_warmup_steps": 3,
    "beta1": 0.9,
    "beta2": 0.95,
    "weight_decay": 0.1,
    "puzzle_emb_lr": 1.0e-2,
    "puzzle_emb_weight_decay": 0.1,
    "deterministic": True,
    "compile": False,
    "device": "cpu",
    "threads": 1,
    "max_steps": 0,
    "ema": False,
    "ema_rate": 0.999,
    "micro_batch_size": "auto",
    "activation_checkpointing": False,
}


def tiny_params(data_root: Path, out: Path, **train_overrides) -> dict:
    """The repository's params (a full, schema-valid set) with a tiny model and run, paths under `out`."""
    train = copy.deepcopy(TINY_TRAIN)
    train.update(train_overrides)
    return deep_merge(
        repo_params(),
        {
            "arch": copy.deepcopy(TINY_ARCH),
            "train": train,
            "paths": {
                "hrm": str(data_root),
                "checkpoints": str(out / "checkpoints"),
                "model": str(out / "models" / "hrm.pt"),
                "train_log": str(out / "reports" / "train"),
                "train_timing": str(out / "reports" / "timing" / "train.json"),
            },
        },
    )


def metric_files(params: dict) -> dict[str, str]:
    """Every dvclive file of a run, relative path -> text (no timestamps in them, so runs compare exactly)."""
    root = Path(params["paths"]["train_log"])
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def final_weights(params: dict) -> dict[str, torch.Tensor]:
    return torch.load(params["paths"]["model"], weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
