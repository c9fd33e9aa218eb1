"""The user-facing error type, and atomic writes: a file goes to a temp file beside it and is renamed over the
target, a folder is built beside its target and swapped in, so nothing already written is half-overwritten."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input or settings. Stages print the message (file, field, index) and exit 1, no traceback."""


def read_json(path: str | Path, missing: str) -> Any:
    """A JSON document, or a UserError naming the file; `missing` says what to run when it is absent."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: file not found ({missing})") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, indent: int | None = None) -> str:
    """Canonical JSON: sorted keys, no NaN, newline at the end, so equal data gives equal bytes."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(obj, sort_keys=True, indent=indent, separators=separators, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> None:
    atomic_write_text(path, dumps_json(obj, indent=indent))


@contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = target.with_name(f".{target.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        os.replace(target, backup)
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


def check_writable(folder: str | Path, what: str) -> None:
    """Write, sync and remove a small file in `folder` (created if missing): a run that cannot write its outputs
    (a parent that is a file, read-only, a full disk) stops before its work, with a UserError naming `what`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(bytes(4096))  # one block: a full disk refuses it (an empty file needs none)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else (err.strerror or str(err))
        raise UserError(f"{what}: cannot write in {folder} ({reason})") from err
