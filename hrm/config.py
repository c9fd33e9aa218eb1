"""Loading `params.yaml`, the single home of every setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A setting is missing or has the wrong type; the message names the file and key."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml into plain dicts; a clear error (no traceback) if it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return params


def section(params: dict[str, Any], name: str, source: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """One top-level section of params, or a ConfigError naming it."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: section '{name}' is missing or not a mapping")
    return value
