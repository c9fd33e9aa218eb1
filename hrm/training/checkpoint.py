"""Full-state checkpoints ``<root>/<fingerprint>/step_<n>/``: ``common.pt`` (model, optimizers, step, sampler,
dvclive history) and ``rank<r>.pt`` per process (ACT carry, RNG states), renamed into place once every rank
wrote (a crash leaves the old or the new one). The fingerprint of the settings and data keys the folder, so
`dvc exp run -S train.lr=...` starts its own line instead of resuming someone else's. One trainer at a time per
`<root>`: `checkpoints_lock`. A checkpoint is data (it may come from someone else): loaded with weights_only, and
a key it lacks is `older_version`, not a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hrm.io import UserError, dumps_json, writing

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
LOCK_FILE = ".hrm-train.lock"  # in paths.checkpoints: pid, host and start of the run using the folder
_HELD_TOKENS: set[str] = set()  # the locks this process holds (a second train() in it is refused too)


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
        try:
            with writing(self.folder):  # a full disk: one line naming the file; the last checkpoint stays
                if self.rank == 0:
                    shutil.rmtree(staging, ignore_errors=True)
                    staging.mkdir(parents=True)
                _barrier(self.world_size)
                own = {"format_version": FORMAT_VERSION, **per_rank}
                _save_synced(torch, own, staging / f"rank{self.rank}.pt")
                if self.rank == 0:
                    header = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, "step": step}
                    _save_synced(
                        torch, {**header, **common, "world_size": self.world_size}, staging / "common.pt"
                    )
        except BaseException:
            if self.rank == 0:
                shutil.rmtree(staging, ignore_errors=True)  # give the space back
            raise
        _barrier(self.world_size)
        if self.rank == 0:
            with writing(self.folder):
                old = self.folder / f".{final.name}.old"
                if final.exists():  # a stop signal right after an eval checkpoint of the same step
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(final, old)
                os.replace(staging, final)
                _fsync_dir(self.folder)
            # older checkpoints and what interrupted writes left (.step_*.tmp/.old): one trainer holds the lock
            for path in self.folder.iterdir():
                name = path.name.removeprefix(".")
                if path != final and path.is_dir() and name.startswith(STEP_PREFIX):
                    shutil.rmtree(path, ignore_errors=True)
        _barrier(self.world_size)
        return final

    def load(self, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """(common, this rank's state), checked against these settings and this process count."""
        import torch

        common = _load(torch, path / "common.pt")
        version = common.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise UserError(
                f"{path / 'common.pt'} was written by a newer version of this code (format {version}, this one "
                f"reads {FORMAT_VERSION}); update the code, or delete {self.folder} to start over"
            )
        if version != FORMAT_VERSION:
            raise older_version(
                path / "common.pt", self.folder, f"format {version}, this one reads {FORMAT_VERSION}"
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


def older_version(file: Path, folder: Path, what: str) -> UserError:
    """The one message for a checkpoint this code cannot continue from (a key or format it does not know)."""
    return UserError(
        f"{file} was written by an older version of this code ({what}); delete {folder} to start over"
    )


def require_keys(entries: Any, keys: Iterable[str], file: Path, folder: Path) -> None:
    """Every key of `keys` in `entries` (a loaded checkpoint file), else `older_version` naming the first missing."""
    for key in keys:
        if not isinstance(entries, dict) or key not in entries:
            raise older_version(file, folder, f"missing {key!r}")


def _load(torch: Any, path: Path) -> dict[str, Any]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise UserError(f"{path}: checkpoint file missing") from err
    except Exception as err:  # a truncated or foreign file: say which, do not guess
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: not a checkpoint of this trainer (a {type(loaded).__name__}, not a dict)")
    return loaded


# ---- one trainer per checkpoints folder


@contextmanager
def checkpoints_lock(root: str | Path, rank: int = 0) -> Iterator[None]:
    """Hold `<root>/LOCK_FILE` (created with O_EXCL, holding pid, host and start time) for the block: a second
    trainer on the folder is refused, a lock whose process died on this host is taken over with a note, and
    the lock goes on every exit the interpreter sees (a SIGKILL leaves a stale one, taken over next time).
    Under torchrun rank 0 holds it for the whole run; the other ranks follow rank 0."""
    if rank != 0:
        yield
        return
    root = Path(root)
    path = root / LOCK_FILE
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
        mine = _acquire(path, root)
    token = json.loads(mine)["token"]
    _HELD_TOKENS.add(token)
    try:
        yield
    finally:
        _HELD_TOKENS.discard(token)
        if _read_lock(path) == mine:
            path.unlink(missing_ok=True)


def _acquire(path: Path, root: Path) -> str:
    """Create the lock file; its text (ours). A live holder is refused, a dead one's lock taken over."""
    text = dumps_json(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "token": uuid.uuid4().hex,
        }
    )
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            held = _read_lock(path)
            if held is None:  # released between the two calls
                continue
            holder = _holder(held, path, root)
            where = f"pid {holder['pid']}, host {holder['host']}, since {holder['since']}"
            if not _gone(holder):
                raise UserError(
                    f"another run ({where}) is using {root}; wait for it to end or stop it "
                    f"(if that run is gone, delete {path})"
                ) from None
            if _take_over(path, held):
                print(
                    f"note: took over {path} from a run that is gone ({where})", file=sys.stderr, flush=True
                )
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return text
    raise UserError(f"could not take {path}: other runs keep taking it; try again")


def _read_lock(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _holder(text: str, path: Path, root: Path) -> dict[str, Any]:
    """The lock's pid/host/since; a lock being written right now is read again (it is created, then filled)."""
    for _ in range(20):
        try:
            holder = json.loads(text)
            if isinstance(holder, dict) and isinstance(holder.get("pid"), int) and "host" in holder:
                return {"since": "?", **holder}
        except ValueError:
            pass
        time.sleep(0.05)
        text = _read_lock(path) or ""
    raise UserError(f"{path} is not a lock this trainer wrote; if no run is using {root}, delete it")


def _gone(holder: dict[str, Any]) -> bool:
    """True only when the holder surely ended: same host and no such process (or our own pid on a lock this
    process does not hold: left by an earlier container that had the same pid and host name)."""
    if holder["host"] != socket.gethostname() or os.name == "nt":  # other hosts' processes cannot be seen
        return False
    if holder["pid"] == os.getpid():
        return holder.get("token") not in _HELD_TOKENS
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, someone else's
        return False
    return False


def _take_over(path: Path, stale: str) -> bool:
    """Move the stale lock aside; if a racing run replaced it meanwhile, put that one back (link: no clobber)."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return False
    if _read_lock(aside) != stale:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


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
