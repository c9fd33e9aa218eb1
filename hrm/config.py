"""`params.yaml`, the one home of every setting, checked against `schemas/params.schema.json` (the one definition
of keys, types, ranges and choices, profiles included) before any work starts; profiles and `--set` overrides.
Checks a schema cannot express (weights summing to 1, eval_interval dividing epochs) stay with their code.
"""

from __future__ import annotations

import copy
import difflib
import json
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hrm.io import UserError

DEFAULT_PARAMS = Path("params.yaml")


def _schema_dir() -> Path:
    """`schemas/` of this checkout, else (a non-editable install) pyproject's data-files copy under <prefix>/share."""
    checkout = Path(__file__).resolve().parents[1] / "schemas"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "hrm-city-routing" / "schemas"


SCHEMA_DIR = _schema_dir()  # params.schema.json and the 18 files' schemas (hrm.data.validation.schemas)
SCHEMA_FILE = SCHEMA_DIR / "params.schema.json"
MAX_PROBLEMS = 10  # listed per error; the rest are counted
# schema keywords whose error reads "KEY must be <what the node accepts>, got VALUE"
BOUNDS = (
    "minimum maximum exclusiveMinimum exclusiveMaximum minLength const minItems maxItems uniqueItems".split()
)


class ConfigError(UserError, ValueError):
    """A setting is missing, unknown or of the wrong type; the message names the file and key (a UserError: exit 1)."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """params.yaml as plain dicts, checked against the schema; ConfigError naming the file and every bad key."""
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
    check_params(params, path)
    return params


def section(params: dict[str, Any], name: str, source: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """One top-level section of params, or a ConfigError naming it."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: section '{name}' is missing or not a mapping")
    return value


# ---- the schema ------------------------------------------------------------------------------------------


@cache
def schema() -> dict[str, Any]:
    try:
        return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(
            f"{SCHEMA_FILE}: schema file not found (the repository's schemas/ folder; reinstall the project)"
        ) from err


@cache
def _validator():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def check_params(params: Any, source: str | Path = DEFAULT_PARAMS) -> None:
    """ConfigError listing every schema violation of `params` as `key.path: what is wrong`."""
    errors = sorted(_validator().iter_errors(params), key=lambda error: [str(p) for p in error.absolute_path])
    problems = [problem for error in errors for problem in _describe(error)]
    if not problems:
        return
    if len(problems) == 1:
        raise ConfigError(f"{source}: {problems[0]}")
    shown = problems[:MAX_PROBLEMS]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise ConfigError(f"{source}: {len(problems)} problems:\n  " + "\n  ".join(shown) + more)


def known_keys() -> list[str]:
    """Every dotted key the schema defines for a full params file (profiles and list items aside)."""
    root = schema()
    keys: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        node = _resolve(node, root)
        for name, child in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            keys.append(key)
            if name != "profiles":
                walk(child, f"{key}.")

    walk(root, "")
    return keys


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """A schema node with its `$ref` (local, '#/$defs/x') merged in."""
    ref = node.get("$ref")
    if not ref:
        return node
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(_resolve(target, root))
    merged.update({k: v for k, v in node.items() if k not in ("$ref", "properties")})
    inner, outer = merged.get("properties", {}), node.get("properties", {})
    merged["properties"] = {**inner, **{k: {**inner.get(k, {}), **v} for k, v in outer.items()}}
    return merged


def closest_key(key: str, candidates: list[str]) -> str | None:
    """The known key a typo most likely meant: a close spelling among `candidates` (the keys of the same
    mapping), else the same last name anywhere in the schema (a key put in the wrong section)."""
    prefix, _, name = key.rpartition(".")
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if match:
        return f"{prefix}.{match[0]}" if prefix else match[0]
    everywhere = known_keys()
    same_name = [k for k in everywhere if k.rpartition(".")[2] == name]
    if same_name:
        return same_name[0]
    match = difflib.get_close_matches(key, everywhere, n=1, cutoff=0.8)
    return match[0] if match else None


def _describe(error: Any) -> Iterator[str]:
    """`key.path: what is wrong` for one schema error, in the words of `_expected`."""
    key, value, kind = error.json_path[2:] or "(top level)", error.instance, error.validator
    prefix = f"{key}." if error.absolute_path else ""
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        for name in sorted(k for k in value if k not in allowed):
            guess = (
                closest_key(f"{prefix}{name}", allowed) if allowed else None
            )  # free keys (profiles): no hint
            hint = f"; did you mean {guess}?" if guess else f" (known here: {', '.join(allowed)})"
            yield f"{prefix}{name}: unknown key{hint if allowed else ''}"
    elif kind == "required":
        missing = [name for name in error.validator_value if name not in value]
        yield from (f"{prefix}{name}: missing (required in a full params file)" for name in missing)
    elif kind == "propertyNames":
        yield f"{key}: key {value!r} is not allowed ({_expected(error.schema['propertyNames'])})"
    elif kind == "enum" and "propertyNames" in error.relative_schema_path:
        yield f"{key}.{value}: unknown name, must be one of {', '.join(map(str, error.validator_value))}"
    elif kind == "enum":
        guess = difflib.get_close_matches(str(value), [str(v) for v in error.validator_value], n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        yield f"{key} must be one of {', '.join(map(str, error.validator_value))}, got {value!r}{hint}"
    elif kind == "type":
        yield f"{key} must be {_expected(error.schema)}, got {_kind(value)} {value!r}{_yaml_hint(value)}"
    elif kind in BOUNDS:
        yield f"{key} must be {_expected(error.schema)}, got {value!r}"
    elif kind == "anyOf":
        yield f"{key} must be {error.schema.get('description', _expected(error.schema))}, got {value!r}"
    else:
        yield f"{key}: {error.message}"


def _kind(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "text", list: "a list", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _yaml_hint(value: Any) -> str:
    """YAML 1.1 (PyYAML) reads 1e-4 as text: the fix is 1.0e-4."""
    if isinstance(value, str):
        try:
            float(value)
            return " (YAML reads numbers like 1e-4 as text: write 1.0e-4)"
        except ValueError:
            pass
    return ""


def _expected(node: dict[str, Any]) -> str:
    """What a schema node accepts, in words: 'an integer >= 1', 'a number in [0, 1]', ..."""
    node = _resolve(node, schema())
    if "const" in node:
        return repr(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(map(str, node["enum"]))
    if "anyOf" in node:
        return " or ".join(_expected(option) for option in node["anyOf"])
    kinds = node.get("type", "any value")
    if isinstance(kinds, list):
        words = " or ".join(kinds)
    else:
        words = {
            "integer": "an integer",
            "number": "a number",
            "string": "text",
            "boolean": "true or false",
            "array": "a list",
            "object": "a mapping",
        }.get(kinds, kinds)
    bounds = []
    if "minimum" in node and "maximum" in node:
        bounds.append(f"in [{node['minimum']}, {node['maximum']}]")
    elif "minimum" in node:
        bounds.append(f">= {node['minimum']}")
    if "exclusiveMinimum" in node:
        bounds.append(f"> {node['exclusiveMinimum']}")
    if "maximum" in node and "minimum" not in node:
        bounds.append(f"<= {node['maximum']}")
    if "exclusiveMaximum" in node:
        bounds.append(f"< {node['exclusiveMaximum']}")
    if node.get("minLength"):
        bounds.append("non-empty")
    if "minItems" in node and node.get("minItems") == node.get("maxItems"):
        bounds.append(f"of exactly {node['minItems']} items")
    elif node.get("minItems") == 1:
        bounds.append("non-empty")
    elif "minItems" in node:
        bounds.append(f"of at least {node['minItems']} items")
    if node.get("uniqueItems"):
        bounds.append("without repeats")
    return " ".join([words, *bounds]) if bounds else words


# ---- profiles --------------------------------------------------------------------------------------------


def profile_overrides(
    params: dict[str, Any], profile: str, arch: str | None = None, source: str | Path = DEFAULT_PARAMS
) -> dict[str, Any]:
    """The overrides `profiles.<profile>` makes when architecture `arch` runs: the profile's own, with
    `profiles.<profile>.per_arch.<arch>` merged on top (the `per_arch` table itself is not an override; the
    schema checks its names). `arch` None: the arch the profile leads to (`chosen_arch`). A new dict;
    ConfigError naming the known profiles for an unknown one."""
    profiles = params.get("profiles") or {}
    overrides = profiles.get(profile)
    if not isinstance(overrides, dict):
        guess = difflib.get_close_matches(profile, list(profiles), n=1)
        hint = f"; did you mean {guess[0]}?" if guess else ""
        known = ", ".join(profiles) or "none"
        raise ConfigError(f"{source}: profiles.{profile} is missing: unknown profile (known: {known}){hint}")
    own = {key: value for key, value in overrides.items() if key != "per_arch"}
    per_arch = overrides.get("per_arch") or {}
    if arch is None:
        arch = chosen_arch(params, profile)
    return deep_merge(own, per_arch.get(arch) or {})


def parse_override(item: str) -> tuple[str, Any]:
    """One `--set key.sub=value` (the `dvc exp run -S` syntax) -> (key, value parsed as YAML); ConfigError
    naming the item otherwise. The one parser of these strings (quickstart, doctor, compare)."""
    key, sep, raw_value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.global_batch_size=384")
    try:
        return key, yaml.safe_load(raw_value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from err


def chosen_arch(params: dict[str, Any], profile: str | None = None, extra: Iterable[str] = ()) -> str:
    """The arch.name a run uses: the last `--set arch.name=...` in `extra`, else the profile's, else params'."""
    for item in reversed(list(extra)):
        if item.partition("=")[0].strip() == "arch.name":
            return str(parse_override(item)[1])
    profile_arch = ((params.get("profiles") or {}).get(profile) or {}).get("arch") if profile else None
    if isinstance(profile_arch, dict) and "name" in profile_arch:
        return str(profile_arch["name"])
    arch = params.get("arch")
    return str(arch.get("name", "hrm_v1")) if isinstance(arch, dict) else "hrm_v1"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` written over it, mapping by mapping (lists and scalars are replaced); a new dict."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def run_params(
    params: dict[str, Any],
    profile: str | None = None,
    overrides: Iterable[str] = (),
    source: str | Path = DEFAULT_PARAMS,
) -> dict[str, Any]:
    """The params one run uses: params.yaml, then `profiles.<profile>` (with its `per_arch` part for the arch a
    `--set arch.name=...` chooses), then the `--set` overrides; checked, a new dict. ConfigError otherwise."""
    overrides = list(overrides)
    arch = chosen_arch(params, profile, overrides)
    merged = deep_merge(params, profile_overrides(params, profile, arch, source) if profile else {})
    apply_overrides(merged, overrides, source)
    applied = [f"profile {profile}"] if profile else []
    applied += [f"--set {' '.join(overrides)}"] if overrides else []
    check_params(merged, f"{source} with {' and '.join(applied)}" if applied else str(source))
    return merged


def apply_overrides(
    params: dict[str, Any], overrides: Iterable[str], source: str | Path = DEFAULT_PARAMS
) -> None:
    """`key.sub=value` strings (the `dvc exp run -S` syntax; value parsed as YAML) written into params in
    place. Unchecked: call `check_params` on the result (a typo'd key is reported there, with a guess)."""
    for item in overrides:
        key, value = parse_override(item)
        node = params
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: {source} has no section {part!r} under which to set {key!r}"
                )
            node = child
        node[parts[-1]] = value
