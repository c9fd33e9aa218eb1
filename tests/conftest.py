"""Shared test fixtures: the repository's params (the one full, schema-valid params set), written to a file
with overrides; a git + DVC copy of this checkout for tests that run DVC or Docker on it."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hrm.config import deep_merge, profile_overrides

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=hrm-tests", "-c", "user.email=hrm-tests@example.invalid"]


def repo_params() -> dict[str, Any]:
    """A fresh copy of the repository's params.yaml."""
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def write_params_file(path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The repository's params with `overrides` merged in (mapping by mapping), written to `path`."""
    params = deep_merge(repo_params(), overrides or {})
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def params_file(tmp_path: Path) -> Callable[..., Path]:
    """`params_file(overrides)` -> tmp_path/params.yaml holding the repository's params plus `overrides`."""

    def write(overrides: dict[str, Any] | None = None, name: str = "params.yaml") -> Path:
        return write_params_file(tmp_path / name, overrides)

    return write


def arch(**overrides: Any) -> dict[str, Any]:
    """params.yaml's `arch` (the paper model) with a test's overrides: a key added to the model reaches
    every test's architecture without editing each copy."""
    return {**repo_params()["arch"], **overrides}


@functools.cache
def _tiny_profile_arch(name: str) -> tuple[tuple[str, Any], ...]:
    params = repo_params()
    arch = deep_merge(params["arch"], profile_overrides(params, "tiny", name).get("arch", {}))
    return tuple({**arch, "name": name}.items())


def tiny_arch(name: str = "hrm_v1", **overrides: Any) -> dict[str, Any]:
    """The `arch` a tiny-profile run of architecture `name` uses (params.yaml's `arch`, `profiles.tiny` and its
    `per_arch.<name>` part, resolved by `profile_overrides`), with a test's overrides: a change of the profile
    reaches every test's model. Unchecked, so that tests of bad settings reach the model builder. Override only
    what the test depends on, and say why there."""
    return {**dict(_tiny_profile_arch(name)), **overrides}


def run(command: list[str], cwd: Path) -> str:
    """Run a command in `cwd` importing that folder's `hrm`; its stdout, or a failed assertion with its output."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (
        f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def copy_checkout(root: Path, exclude: tuple[str, ...] = ("dvc.lock",)) -> Path:
    """This checkout's files as git sees them (tracked, and untracked but not ignored) copied into `root`,
    less the paths that start with one of `exclude` (by default `dvc.lock`: the copy runs its own stages)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file() and not name.startswith(exclude):
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is ~10x faster than two fighting for the cores.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HRM-layout dataset small enough for whole training runs in seconds (10 train groups, 6 test examples)."""
    from hrm_layout import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), train_groups=10, test_examples=6)


def tiny_checkout(root: Path, exclude: tuple[str, ...] = ("dvc.lock",)) -> Path:
    """A git copy of this checkout's files (`copy_checkout`) with the tiny profile applied and committed."""
    from hrm.config import run_params

    copy_checkout(root, exclude=exclude)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    tiny = run_params(params, "tiny")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False), encoding="utf-8")
    run(["git", "init", "-q"], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", "tiny profile"], root)
    return root
