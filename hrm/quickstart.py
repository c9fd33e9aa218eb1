"""`hrm quickstart`: the CPU quick profile, end to end, as a DVC experiment.

The profile is a set of overrides kept in params.yaml under `profiles.<name>`, plus, under
`profiles.<name>.per_arch.<arch name>`, overrides applied on top of it when that architecture is chosen (e.g. TRM's
own cycles at the same width), see `profile_overrides`. It runs with
`dvc exp run --temp`, so the workspace's params.yaml keeps the paper values and the paper pipeline's outputs
are untouched; the run shows in `dvc exp show` and `dvc metrics diff HEAD <name>` like any experiment. Its
report is then copied out of the experiment into `reports/<name>/` for reading.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hrm.config import ConfigError, load_params
from hrm.io import UserError


def flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` written into `base` (nested mappings merged key by key, anything else replaced); returns base."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def profile_overrides(
    params: Mapping[str, Any], profile: str, arch: str, source: str | Path = "params.yaml"
) -> dict[str, Any]:
    """The overrides `profiles.<profile>` makes when architecture `arch` is chosen: the profile's own, with
    `profiles.<profile>.per_arch.<arch>` merged on top (the `per_arch` table itself is not an override).

    UserError naming the key for a missing profile, a per_arch that is not a mapping of mappings, or a
    per_arch entry for an architecture that does not exist (a typo would otherwise be silently ignored).
    """
    profiles = params.get("profiles")
    overrides = profiles.get(profile) if isinstance(profiles, Mapping) else None
    if not isinstance(overrides, Mapping):
        raise UserError(f"{source}: profiles.{profile} is missing or not a mapping")
    per_arch = overrides.get("per_arch", {})
    if not isinstance(per_arch, Mapping) or not all(isinstance(v, Mapping) for v in per_arch.values()):
        raise UserError(
            f"{source}: profiles.{profile}.per_arch must map architecture names to override sets, got {per_arch!r}"
        )
    if per_arch:
        from hrm.models import ARCHITECTURES  # imports torch: only when there is something to check

        unknown = sorted(set(per_arch) - set(ARCHITECTURES))
        if unknown:
            raise UserError(
                f"{source}: profiles.{profile}.per_arch.{unknown[0]} is not an architecture "
                f"(arch.name is one of {', '.join(ARCHITECTURES)})"
            )
    merged = deep_merge({}, {k: v for k, v in overrides.items() if k != "per_arch"})
    return deep_merge(merged, per_arch.get(arch, {}))


def chosen_arch(params: Mapping[str, Any], profile: str, extra: Iterable[str] = ()) -> str:
    """The arch.name a run uses: the last `--set arch.name=...`, else the profile's, else params.yaml's."""
    for item in reversed(list(extra)):
        key, _, value = item.partition("=")
        if key.strip() == "arch.name":
            return str(yaml.safe_load(value))
    profile_arch = (params.get("profiles") or {}).get(profile, {}) or {}
    if isinstance(profile_arch, Mapping) and isinstance(profile_arch.get("arch"), Mapping):
        if "name" in profile_arch["arch"]:
            return str(profile_arch["arch"]["name"])
    arch = params.get("arch")
    return str(arch.get("name", "hrm_v1")) if isinstance(arch, Mapping) else "hrm_v1"


def set_param_args(overrides: dict[str, Any]) -> list[str]:
    """`dvc exp run -S key=value` arguments; values in JSON, which DVC parses as YAML."""
    return [f"-S{key}={json.dumps(value)}" for key, value in flatten(overrides).items()]


def _run(command: list[str]) -> None:
    print("+ " + " ".join(command), flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise UserError(f"command failed with exit code {result.returncode}: {' '.join(command)}")


def quickstart(
    params_path: str | Path = "params.yaml",
    profile: str = "quick",
    extra: tuple[str, ...] = (),
    name: str | None = None,
) -> Path:
    """Run the named profile (plus `extra` `key=value` overrides) as experiment `name` (default: the
    profile's name); return the folder holding its report."""
    try:
        params = load_params(params_path)
    except ConfigError as err:
        raise UserError(str(err)) from err
    for item in extra:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. arch.name=transformer")
    arch = chosen_arch(params, profile, extra)
    overrides = profile_overrides(params, profile, arch, source=params_path)
    if shutil.which("dvc") is None:
        raise UserError("dvc is not on PATH: install the project first (see README)")
    if subprocess.run(["git", "rev-parse", "--verify", "HEAD"], capture_output=True).returncode != 0:
        raise UserError("quickstart needs a git checkout with at least one commit (a clone of this repo)")

    name = name or profile
    started = time.perf_counter()
    set_args = set_param_args(overrides) + [f"-S{item}" for item in extra]
    _run(["dvc", "exp", "run", "--temp", "--force", "-n", name, *set_args])
    eval_reports = str(flatten(params.get("paths", {})).get("eval_reports", "reports/eval"))
    target = Path("reports") / "experiments" / name
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    _run(["dvc", "get", ".", eval_reports, "--rev", name, "-o", str(staging)])
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    elapsed = time.perf_counter() - started

    metrics_file = target / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        shown = {k: v for k, v in flatten(metrics).items() if k.startswith("test.") and k.count(".") == 1}
        for key, value in sorted(shown.items()):
            print(f"  {key:<40} {value}")
    print(f"quick profile finished in {elapsed / 60:.1f} min; report: {target / 'index.html'}")
    print(f"compare: dvc exp show   |   dvc metrics diff HEAD {name}")
    return target
