"""The runs of a comparison (arch x seed x `--set` variant), each checked as its stages will check it before
anything is queued: a UserError here means nothing was queued."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hrm.config import (
    DEFAULT_PARAMS,
    check_params,
    closest_key,
    closest_name,
    parse_override,
    profile_overrides,
    set_value,
)
from hrm.io import UserError
from hrm.quickstart import flatten
from hrm.rules import check_rules

# compare sets these itself: one per run
OWNED_KEYS = ("arch.name", "train.seed")


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,60}$")


@dataclass(frozen=True)
class Planned:
    """One run of the comparison: its experiment name and every override it is queued with."""

    name: str
    arch: str
    seed: int
    data_seed: int | None
    variant: tuple[tuple[str, Any], ...]  # the --set values of this grid point, sorted by key
    overrides: dict[str, Any] = field(hash=False, compare=False)  # flat: profile + per-arch + variant + seeds

    @property
    def variant_label(self) -> str:
        return " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in self.variant) or "(profile)"


def known_archs() -> list[str]:
    """The architectures `build_model` accepts (one list: hrm.models.ARCHITECTURES)."""
    from hrm.models import ARCHITECTURES  # imports torch: only here

    return list(ARCHITECTURES)


def parse_sets(items: Sequence[str], params: dict[str, Any]) -> list[dict[str, Any]]:
    """`--set key=value` items -> grid points. The same key given twice is two variants (a grid axis);
    different keys combine. Values are YAML, as `dvc exp run -S` reads them."""
    known = flatten({k: v for k, v in params.items() if k != "profiles"})
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, value = parse_override(item)
        if key in OWNED_KEYS:
            raise UserError(f"--set {key}: hrm compare sets {key} per run; use --archs / --seeds instead")
        if key not in known and not any(k.startswith(key + ".") for k in known):
            prefix = key.rpartition(".")[0]
            below = prefix + "." if prefix else ""
            siblings = {k.removeprefix(below).split(".")[0] for k in known if k.startswith(below)}
            guess = closest_key(key, sorted(siblings))
            hint = f"; did you mean {guess}?" if guess else ""
            raise UserError(f"--set {key}: params.yaml has no key {key}{hint}")
        if value not in axes.setdefault(key, []):
            axes[key].append(value)
    keys = sorted(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


def _variant_tag(variant: dict[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(variant, sort_keys=True).encode("utf-8")).hexdigest()
    return f"-v{digest[:6]}" if variant else ""


def plan(
    params: dict[str, Any],
    *,
    profile: str,
    archs: Sequence[str],
    seeds: int,
    data_seeds: bool = False,
    sets: Sequence[str] = (),
    name: str | None = None,
    available_archs: Sequence[str] | None = None,
) -> list[Planned]:
    """Every run of the comparison, validated: a UserError here means nothing was queued."""
    profile_overrides(params, profile)  # a ConfigError naming the known profiles for an unknown one
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: need at least 1 seed per arch")
    available = list(available_archs) if available_archs is not None else known_archs()
    if not archs:
        raise UserError("--archs: give at least one arch")
    unknown = [a for a in archs if a not in available]
    if unknown:
        guesses = [guess for guess in (closest_name(a, available) for a in unknown) if guess]
        hint = f"; did you mean {', '.join(guesses)}?" if guesses else ""
        raise UserError(f"--archs: unknown arch {', '.join(unknown)} (known: {', '.join(available)}){hint}")
    if len(set(archs)) != len(archs):
        raise UserError(f"--archs: an arch is listed twice: {','.join(archs)}")
    prefix = name or f"cmp-{profile}"
    if not NAME_PATTERN.match(prefix):
        raise UserError(f"--name {prefix!r}: use letters, digits, '-' and '_' (it becomes a git ref)")
    variants = parse_sets(sets, params)
    if data_seeds and any("generate.seed" in v for v in variants):
        raise UserError("--set generate.seed: --data-seeds sets generate.seed per run; drop one of them")

    runs = []
    for variant in variants:
        tag, items = _variant_tag(variant), tuple(sorted(variant.items()))
        for arch in archs:
            merged = {**flatten(profile_overrides(params, profile, arch)), **variant}
            first_seed = int(merged.get("train.seed", params.get("train", {}).get("seed", 0)))
            first_data = int(merged.get("generate.seed", params.get("generate", {}).get("seed", 0)))
            for i in range(seeds):
                seed, data_seed = first_seed + i, first_data + i if data_seeds else None
                overrides = {**merged, "arch.name": arch, "train.seed": seed}
                if data_seeds:
                    overrides["generate.seed"] = data_seed
                run_name = f"{prefix}-{arch}-s{seed}" + (f"-d{i}" if data_seeds else "") + tag
                runs.append(Planned(run_name, arch, seed, data_seed, items, overrides))
    for run in runs:
        check_run(params, run, profile)
    return runs


def params_of(params: dict[str, Any], run: Planned) -> dict[str, Any]:
    """The params.yaml a run sees, nested: HEAD's params with the run's -S values written in (as DVC does)."""
    merged = {key: value for key, value in params.items() if key != "profiles"}
    merged = json.loads(json.dumps(merged))  # a copy, in the types DVC writes back (JSON values)
    for key, value in run.overrides.items():
        set_value(merged, key, value, f"run {run.name}: -S {key}")
    return merged


def check_run(params: dict[str, Any], run: Planned, profile: str) -> None:
    """One planned run checked as its stages will check it (schema, then every rule between keys: eval_interval
    divides epochs, the micro-batch divides the batch, the model's and the generator's rules), before anything
    is queued: a UserError naming the run, its variant and the broken rule."""
    where = f"run {run.name} (profile {profile}, arch {run.arch}, {run.variant_label})"
    try:
        full = params_of(params, run)
        check_params(full, DEFAULT_PARAMS)
        check_rules(full, DEFAULT_PARAMS)
    except UserError as err:
        raise UserError(f"{where}: {err}; nothing was queued") from None


def expected_params(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The flat params.yaml a run of `overrides` sees (HEAD's params with the -S values applied)."""
    flat = flatten(params)
    for key, value in overrides.items():
        for old in [k for k in flat if k.startswith(key + ".")]:
            del flat[old]  # a whole mapping replaced
        flat[key] = value
    return flat
