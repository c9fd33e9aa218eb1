"""Full-state checkpoints ``<root>/<fingerprint>/step_<n>/``: ``common.pt`` (model, optimizers, step, sampler,
dvclive history) and ``rank<r>.pt`` per process (ACT carry, RNG states), renamed into place once every rank
wrote (a crash leaves the old or the new one). The fingerprint of the settings and data keys the folder, so
`dvc exp run -S train.lr=...` starts its own line instead of resuming someone else's."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from hrm.io import UserError, dumps_json

FORMAT_VERSION = 1
# Settings that change neither the trajectory nor the numbers: resuming with another value is fine.
NEUTRAL_TRAIN_KEYS = (
    "max_steps",
    "compile",
    "device",
    "deterministic",
    "threads",
    "micro_batch_size",  # the same computation at any split: a run may resume on a smaller GPU
    "activation_checkpointing",
)
STEP_PREFIX = "step_"


def fingerprint(arch: dict[str, Any], train: dict[str, Any], data_texts: dict[str, str]) -> str:
    """Hash of what decides the run: arch, train (minus neutral keys) and the datasets' metadata files."""
    relevant = {
        "arch": arch,
        "train": {k: v for k, v in train.items() if k not in NEUTRAL_TRAIN_KEYS},
        "data": data_texts,
    }
    return hashlib.sha256(dumps_json(relevant).encode("utf-8")).hexdigest()[:16]


class CheckpointStore:
    """Checkpoints of one fingerprint; only the newest is kept (a carry can be gigabytes at the paper batch)."""

    def __init__(self, root: str | Path, run_fingerprint: str, rank: int = 0, world_size: int = 1):
        self.fingerprint, self.folder = run_fingerprint, Path(root) / run_fingerprint
        self.rank, self.world_size = rank, world_size

    def check_shared(self) -> None:
        """Collective: all ranks stop unless each sees rank 0's marker file (multi-node: a shared disk)."""
        if self.world_size == 1:
            return
        import secrets

        import torch
        import torch.distributed as dist

        names = [f".shared-check-{secrets.token_hex(8)}" if self.rank == 0 else None]
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / names[0]).write_text("written by rank 0", encoding="utf-8")
        dist.broadcast_object_list(names, src=0)
        marker = self.folder / str(names[0])
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        blind = torch.zeros(self.world_size, device=device)
        blind[self.rank] = 0.0 if marker.is_file() else 1.0
        dist.all_reduce(blind)
        _barrier(self.world_size)
        if self.rank == 0:
            marker.unlink(missing_ok=True)
        ranks = [r for r, flag in enumerate(blind.tolist()) if flag > 0]
        if ranks:
            raise UserError(
                f"rank(s) {ranks} cannot see rank 0's checkpoint folder {self.folder}: on several machines "
                "paths.checkpoints must be on a file system every node shares (same path on each), "
                "e.g. NFS; see docs/multinode.md"
            )

    def latest(self) -> Path | None:
        """Newest complete checkpoint folder, or None (temp folders of an interrupted write are ignored)."""
        found = [
            (int(path.name[len(STEP_PREFIX) :]), path)
            for path in self.folder.glob(f"{STEP_PREFIX}*")
            if path.name[len(STEP_PREFIX) :].isdigit() and (path / "common.pt").is_file()
        ]
        return max(found)[1] if found else None

    def save(self, step: int, common: dict[str, Any], per_rank: dict[str, Any]) -> Path:
        """Collective under torch.distributed: every rank calls it with its own `per_rank` state."""
        import torch

        final = self.folder / f"{STEP_PREFIX}{step:09d}"
        staging = self.folder / f".{final.name}.tmp"
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        _barrier(self.world_size)
        _save_synced(torch, {"format_version": FORMAT_VERSION, **per_rank}, staging / f"rank{self.rank}.pt")
        if self.rank == 0:
            header = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, "step": step}
            _save_synced(torch, {**header, **common, "world_size": self.world_size}, staging / "common.pt")
        _barrier(self.world_size)
        if self.rank == 0:
            old = self.folder / f".{final.name}.old"
            if final.exists():  # a stop signal right after an eval checkpoint of the same step
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
            _fsync_dir(self.folder)
            for path in self.folder.iterdir():
                if path != final and path.is_dir() and path.name.startswith(STEP_PREFIX):
                    shutil.rmtree(path, ignore_errors=True)
        _barrier(self.world_size)
        return final

    def load(self, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """(common, this rank's state), checked against these settings and this process count."""
        import torch

        common = _load(torch, path / "common.pt")
        if common.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{path / 'common.pt'}: checkpoint format {common.get('format_version')}, expected {FORMAT_VERSION}"
            )
        if common.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"{path / 'common.pt'}: written for other settings or data (fingerprint {common.get('fingerprint')}, "
                f"these params give {self.fingerprint})"
            )
        if common.get("world_size") != self.world_size:
            raise UserError(
                f"{path}: written by {common.get('world_size')} processes, this run has {self.world_size}; "
                "resume with the same --nproc-per-node or delete the checkpoint folder"
            )
        return common, _load(torch, path / f"rank{self.rank}.pt")


def _load(torch: Any, path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise UserError(f"{path}: checkpoint file missing") from err
    except Exception as err:  # a truncated or foreign file: say which, do not guess
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


def _save_synced(torch: Any, obj: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
