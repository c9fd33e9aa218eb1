"""The user-facing error type, and the one way outputs are written. Writes are atomic (a file goes to a temp
file beside it and is renamed over the target; a folder is built beside its target and swapped in), land only
under a declared output (`output_path`), follow the user's umask, never replace a folder holding files some
other program put there (`check_replaceable`), and a full, read-only or forbidden disk is one `UserError`
naming the path (`writing`). Data files are read here too, as untrusted (`read_json`, `parse_json`,
`read_npy`), and a value from data is shown shortened (`shown`). docs/threat-model.md says which inputs these
rules defend against."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import reprlib
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# The manifest a stage writes into a folder it replaces whole: the files it wrote, so the next run knows them.
MANIFEST = ".hrm-outputs.json"
_FOREIGN_SHOWN = 5  # entries named in a refusal
# errno -> what the user can do; anything else is a bug or a crash, not a machine failure, and is raised as is.
_EDQUOT = getattr(errno, "EDQUOT", errno.ENOSPC)  # no quotas on Windows: the same as a full disk
_WRITE_FAILURES = {
    _EDQUOT: "free space within your quota (or point the output elsewhere) and run again",
    errno.ENOSPC: "free space on that disk (or point the output elsewhere) and run again",
    errno.EROFS: "the file system is read-only: point the output at a writable place",
    errno.EACCES: "give this user write permission there, or point the output elsewhere",
    errno.EPERM: "give this user write permission there, or point the output elsewhere",
}
_ONLY_WRITES_FAIL = (errno.ENOSPC, _EDQUOT, errno.EROFS)  # a read never reports these


class UserError(Exception):
    """Bad input or settings. Stages print the message (file, field, index) and exit 1, no traceback."""


@contextmanager
def reading(path: str | Path, missing: str = "", error: type[UserError] = UserError) -> Iterator[None]:
    """Reads of `path` in this block: an absent file or one the OS cannot read becomes `error` naming the file
    (`missing`: what to run when it is absent). The counterpart of `writing`."""
    try:
        yield
    except FileNotFoundError as err:
        raise error(f"{path}: file not found" + (f" ({missing})" if missing else "")) from err
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from err


def read_json(path: str | Path, missing: str) -> Any:
    """A JSON document (`parse_json`'s rules), or a UserError naming the file; `missing` says what to run when
    it is absent."""
    path = Path(path)
    try:
        with reading(path, missing):
            text = path.read_text(encoding="utf-8")
        return parse_json(text, path)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err


# Data files nest a few levels (the raw summary, the deepest, 5). Recursive consumers (json's parser,
# jsonschema: several frames a level) must stay far below Python's recursion limit of 1000.
MAX_JSON_DEPTH = 32
_JSON_ESCAPED = b'"\\/bfnrtu'  # a backslash in JSON is followed by one of these
_JSON_DROPPED = bytes(sorted(set(range(256)) - set(b"[]{}" + _JSON_ESCAPED)))
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(text: str) -> int:
    """How deep a JSON text's arrays and objects nest, from its brackets outside strings, without parsing
    (a twentieth of json.loads's time): every other byte is dropped but the escapes, so strings stay whole."""
    kept = text.encode("utf-8", "surrogatepass").translate(None, _JSON_DROPPED)
    if b'"' in kept:
        kept = _JSON_STRING.sub(b"", kept)
    kept = kept.translate(None, _JSON_ESCAPED)
    return max(accumulate(_BRACKET_STEP[byte] for byte in kept), default=0)


class _NonFinite:
    """Stands in for NaN, Infinity or an overflowing number while parsing, so its place can be named."""

    def __init__(self, token: str):
        self.token = token


def _first_non_finite(value: Any, where: str = "$") -> tuple[str, str] | None:
    """(JSON path, token) of the first `_NonFinite` in document order."""
    if isinstance(value, _NonFinite):
        return where, value.token
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        found = _first_non_finite(
            child, f"{where}.{shorten(key)}" if isinstance(key, str) else f"{where}[{key}]"
        )
        if found:
            return found
    return None


def parse_json(text: str, source: str | Path) -> Any:
    """The rules every untrusted JSON file is read by (`read_json`, and the raw files' reader): nesting at
    most MAX_JSON_DEPTH, numbers finite (Python's json takes NaN and Infinity, and 1e400 as inf, none of which
    is JSON, and each poisons every sum after it), integers under Python's digit limit. A UserError names
    `source` and where; a syntax error is left to the caller (json.JSONDecodeError), which words it."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise UserError(
            f"{source}: JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} are read (data files nest a few)"
        )
    seen: list[_NonFinite] = []

    def non_finite(token: str) -> _NonFinite:
        seen.append(_NonFinite(token))
        return seen[-1]

    def number(token: str) -> float | _NonFinite:
        value = float(token)
        return value if math.isfinite(value) else non_finite(token)

    try:
        document = json.loads(text, parse_constant=non_finite, parse_float=number)
    except json.JSONDecodeError:
        raise  # the caller words syntax errors
    except ValueError as err:  # the one other ValueError of parsing: an integer beyond the digit limit
        raise UserError(
            f"{source}: an integer has more than {sys.get_int_max_str_digits()} digits; not a number data holds"
        ) from err
    if seen:
        where, token = _first_non_finite(document) or ("$", seen[0].token)
        raise UserError(
            f"{source}: {where} is {shorten(token)}, not a finite number (NaN, Infinity and numbers beyond "
            "a float's range are refused)"
        )
    return document


def read_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """A .npy array from data: its header checked against the file's size before anything is allocated (a
    header may claim 10^12 entries), no pickled objects (`allow_pickle=False`); `mmap` maps it read-only.
    A UserError names the file, the claimed shape and the size."""
    import numpy as np
    from numpy.lib import format as npy_format

    path = Path(path)
    try:
        with reading(path), open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            read_header = (
                npy_format.read_array_header_2_0 if version[0] >= 2 else npy_format.read_array_header_1_0
            )
            shape, _, dtype = read_header(handle)
            data_bytes = path.stat().st_size - handle.tell()
    except ValueError as err:
        raise UserError(f"{path}: not a readable .npy array ({shorten(str(err))})") from err
    if dtype.hasobject:
        raise UserError(f"{path}: dtype {dtype} holds Python objects (pickled); refused")
    if any(size < 0 for size in shape):
        raise UserError(f"{path}: header claims shape {shape}; sizes must not be negative")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != data_bytes:
        raise UserError(
            f"{path}: header claims shape {shape} of {dtype} ({claimed} bytes) but the file holds "
            f"{data_bytes} bytes of data"
        )
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .npy array ({shorten(str(err))})") from err


SHOWN_CHARS = 80  # of a value from data in a message or a report
_BOUNDED_REPR = reprlib.Repr()
_BOUNDED_REPR.maxlevel = 3
_BOUNDED_REPR.maxstring = _BOUNDED_REPR.maxother = _BOUNDED_REPR.maxlong = SHOWN_CHARS
_BOUNDED_REPR.maxlist = _BOUNDED_REPR.maxtuple = _BOUNDED_REPR.maxdict = _BOUNDED_REPR.maxset = 8


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters + '... (N chars)': a message must stay one readable line."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A value read from data as a message or report shows it: its repr, shortened (a field may hold a 50 MB
    string or a million-entry list; only its start, and a string's length, are shown)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"
    text = _BOUNDED_REPR.repr(value)  # containers: a few entries, a few levels
    return text if len(text) <= limit else f"{text[:limit]}..."


def write_failure(err: OSError, path: str | Path, within: str | Path | None = None) -> UserError | None:
    """A machine failure while writing `path` (full disk, read-only, no permission) as one line naming the file
    (or `path`) and what to do; None for any other error, or for a permission error about a file outside
    `within` (default `path`): a read elsewhere, not a write."""
    hint = _WRITE_FAILURES.get(err.errno or 0)
    if hint is None:
        return None
    named = Path(err.filename) if isinstance(err.filename, str) else None
    if (
        err.errno not in _ONLY_WRITES_FAIL
        and named is not None
        and not _is_under(named, Path(within or path))
    ):
        return None
    reason = err.strerror or os.strerror(err.errno or 0)
    return UserError(f"cannot write {named or path}: {reason}; {hint} (outputs written before are kept)")


@contextmanager
def writing(path: str | Path, within: str | Path | None = None) -> Iterator[None]:
    """Writes to `path` in this block (files under `within`, default `path`): a machine failure becomes
    `write_failure`'s UserError."""
    try:
        yield
    except OSError as err:
        failure = write_failure(err, path, within)
        if failure is None:
            raise
        raise failure from err


def output_path(root: str | Path, relative: str, source: str) -> Path:
    """`root / relative`, refused (UserError naming `source`) unless it resolves inside `root`: a name read
    from data or a checkpoint cannot point a write elsewhere (absolute, `..`, or through a symlink)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if Path(relative).is_absolute() or target == base or not target.is_relative_to(base):
        raise UserError(f"{source}: path {relative!r} leaves the output folder {root}; refused")
    return target


def current_umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get what open()/mkdir() would give."""
    path = Path(path)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~current_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            follow_umask(tmp)
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


def manifest_entries(folder: Path) -> set[str]:
    """Top-level names the folder's manifest says its stage wrote (empty: no manifest, or not a readable one)."""
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {Path(name).parts[0] for name in files if isinstance(name, str) and name}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return set()


def check_replaceable(target: str | Path, owned: Iterable[str] = ()) -> None:
    """Refuse (UserError naming the first few entries) to replace `target` unless it is absent, empty, or holds
    only top-level entries its stage writes: `owned` (what this run writes) or what the folder's manifest lists
    (what it wrote last time). A folder pointed at `reports` or a source folder is never deleted."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise UserError(
            f"{target} is a file, not an output folder; move it away or choose another output path"
        )
    known = {*owned, *manifest_entries(target), MANIFEST}
    foreign = []
    for entry in sorted(os.listdir(target)):
        if entry not in known:
            foreign.append(entry)
            if len(foreign) > _FOREIGN_SHOWN:
                break
    if foreign:
        shown = ", ".join(foreign[:_FOREIGN_SHOWN]) + (", ..." if len(foreign) > _FOREIGN_SHOWN else "")
        raise UserError(
            f"{target} holds files this stage did not write ({shown}); it replaces that folder whole: "
            "choose an empty or new folder, or move those files away"
        )


@contextmanager
def staged_directory(target: str | Path, manifest: bool = False, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a fresh folder beside `target`; on success it replaces `target` (after `check_replaceable`: the
    entries written now, `owned` ones this stage writes only sometimes, or the old manifest's), on error it is
    removed and `target` is untouched. `manifest`: record the files written (MANIFEST), so a later run that
    writes fewer still recognises them. A symlinked `target` keeps its link; the folder it points to is
    replaced."""
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    with writing(target, within=target.parent):  # the staging folder is beside the target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        try:
            follow_umask(staging)
            yield staging
            if manifest:
                written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
                atomic_write_json(staging / MANIFEST, {"files": written}, indent=1)
            check_replaceable(target, owned=[*os.listdir(staging), *owned])
        except BaseException as err:
            shutil.rmtree(staging, ignore_errors=True)
            failure = write_failure(err, target, target.parent) if isinstance(err, OSError) else err
            if isinstance(failure, UserError) and str(staging) in str(
                failure
            ):  # name the output, not its temp
                raise UserError(str(failure).replace(str(staging), str(target))) from err
            if failure is not None and failure is not err:
                raise failure from err
            raise
        backup = target.with_name(f".{target.name}.old")
        _remove(backup)
        if target.exists():
            os.replace(target, backup)
        os.replace(staging, target)
        _remove(backup)


def _remove(path: Path) -> None:
    """Delete a file, link or folder if present (rmtree refuses a link to a folder: unlink it)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _is_under(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


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
