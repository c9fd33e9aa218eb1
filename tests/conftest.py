"""Shared test fixtures: the repository's params (the one full, schema-valid params set), written to a file
with overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hrm.config import deep_merge

REPO = Path(__file__).resolve().parents[1]


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
