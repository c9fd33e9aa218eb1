"""`hrm quickstart`: a params.yaml profile (with its `per_arch` part for the chosen arch) end to end as one
`dvc exp run --temp` experiment, so the workspace keeps the paper params and outputs; its report is copied out."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hrm.config import check_rules, chosen_arch, load_params, parse_override, profile_overrides, run_params
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


def set_param_args(overrides: dict[str, Any]) -> list[str]:
    """`dvc exp run -S key=value` arguments; values in JSON, which DVC parses as YAML."""
    return [f"-S{key}={json.dumps(value)}" for key, value in flatten(overrides).items()]


def _run(command: list[str]) -> None:
    print("+ " + shlex.join(command), flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise UserError(f"command failed with exit code {result.returncode}: {shlex.join(command)}")


def quickstart(
    params_path: str | Path = "params.yaml",
    profile: str = "quick",
    extra: tuple[str, ...] = (),
    name: str | None = None,
) -> Path:
    """Run `profile` plus `extra` overrides as experiment `name` (default: the profile's); its report folder."""
    params = load_params(params_path)
    # per-arch overrides follow --set arch.name=...
    overrides = profile_overrides(params, profile, chosen_arch(params, profile, extra), params_path)
    # checked here, schema and rules between keys: a typo or an impossible run stops before DVC starts a stage
    check_rules(run_params(params, profile, extra, params_path), params_path)
    if shutil.which("dvc") is None:
        raise UserError("dvc is not on PATH: install the project first (see README)")
    if subprocess.run(["git", "rev-parse", "--verify", "HEAD"], capture_output=True).returncode != 0:
        raise UserError("quickstart needs a git checkout with at least one commit (a clone of this repo)")

    name = name or profile
    started = time.perf_counter()
    # each --set value as JSON, as this checked it (DVC reads -S values as YAML 1.2: `yes` would stay text)
    set_args = set_param_args(overrides) + set_param_args(dict(parse_override(item) for item in extra))
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
