"""`params.yaml`, the one home of every setting, checked against `schemas/params.schema.json` (the one definition
of keys, types, ranges and choices, profiles included) before any work starts; profiles and `--set` overrides.
`read_params` is the one reader of params text (files and `--set` values); `hrm.rules.check_rules` applies every rule between
keys that a schema cannot express (eval_interval dividing epochs, weights summing to 1, ...).
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hrm.io import UserError, reading

DEFAULT_PARAMS = Path("params.yaml")


def _schema_dir() -> Path:
    """`schemas/` of this checkout, else (a non-editable install) pyproject's data-files copy under <prefix>/share."""
    checkout = Path(__file__).resolve().parents[1] / "schemas"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "hrm-city-routing" / "schemas"


SCHEMA_DIR = _schema_dir()  # params.schema.json and the 18 files' schemas (hrm.data.conversion.raw)
SCHEMA_FILE = SCHEMA_DIR / "params.schema.json"
MAX_PROBLEMS = 10  # listed per error; the rest are counted
# schema keywords whose error reads "KEY must be <what the node accepts>, got VALUE"
BOUNDS = (
    "minimum maximum exclusiveMinimum exclusiveMaximum minLength const minItems maxItems uniqueItems".split()
)


class ConfigError(UserError, ValueError):
    """A setting is missing, unknown or of the wrong type; the message names the file and key (a UserError: exit 1)."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """params.yaml as plain dicts, read by `read_params` and checked against the schema; ConfigError naming the
    file and every bad key."""
    path = Path(path)
    with reading(path, error=ConfigError):
        data = path.read_bytes()
    params = read_params(data, path)
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


# ---- the one reader of params text (params files and every `--set` value) -----------------------------------

MAX_DEPTH = (
    32  # params.yaml nests 4 levels; a deeper document is a mistake (or an attack on the parser's stack)
)
# YAML 1.2 floats with an exponent (1e-3, 5E-4, 1.0e3): YAML 1.1 (PyYAML) needs a dot and a signed exponent and
# reads these as text, while DVC (ruamel, YAML 1.2) reads them as numbers; `.5` and `1.0e-3` are floats in both.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$")
FLOAT_TAG = "tag:yaml.org,2002:float"
PLAIN_TYPES = (dict, list, str, int, float, bool, type(None))


class _Refused(yaml.YAMLError):
    """A document the params reader will not compose: where (a YAML mark) and why."""

    def __init__(self, mark: Any, why: str):
        super().__init__(why)
        self.mark, self.why = mark, why


class _ParamsLoader(yaml.SafeLoader):
    """safe_load's rules plus YAML 1.2 exponent floats; no anchors or aliases (a few lines of nested aliases
    expand to billions of values: the "billion laughs"), at most MAX_DEPTH levels of nesting."""

    yaml_implicit_resolvers = {
        first: ([(FLOAT_TAG, EXPONENT_FLOAT)] if first in "-+0123456789." else []) + list(resolvers)
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(
                event.start_mark,
                "YAML anchors (&name) and aliases (*name) are not allowed in params (nested aliases can expand "
                "to billions of values); write each value out",
            )
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth


def read_params(data: str | bytes, source: str | Path, key: str = "") -> Any:
    """The one reader of params text, for params files and every `--set` value: YAML as `yaml.safe_load` reads
    it, except that exponent numbers (1e-3) are floats as in YAML 1.2 (DVC's reading); refused with a
    ConfigError naming `source`: text that is not UTF-8 (with the byte offset), anchors and aliases, nesting
    deeper than MAX_DEPTH, and any value that is not plain data or not finite (naming its key under `key`)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        value = yaml.load(data, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader subclass)
    except _Refused as err:
        raise ConfigError(f"{source}: line {err.mark.line + 1}: {err.why}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({err})") from None
    except (ValueError, OverflowError) as err:  # e.g. a date 2025-13-01, an integer of more than 4300 digits
        raise ConfigError(f"{source}: not a readable value ({err})") from None
    _check_plain(value, key, source)
    return value


def _check_plain(value: Any, key: str, source: str | Path) -> None:
    """ConfigError naming the key of the first value that is not plain data (text keys; text, numbers,
    true/false, null, lists, mappings) or is NaN or infinite, which pass every range check (a comparison with
    NaN is false)."""
    where = key or "(top level)"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {where} must be a finite number, got {value!r}")
    if not isinstance(value, PLAIN_TYPES):
        raise ConfigError(
            f"{source}: {where}: YAML reads {value} as a {type(value).__name__}; a setting is text, a number, "
            "true/false, null, a list or a mapping (quote it to keep it text)"
        )
    if isinstance(value, dict):
        for name, child in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"{source}: {where}: key {name!r} must be text")
            _check_plain(child, f"{key}.{name}" if key else name, source)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_plain(child, f"{where}[{index}]", source)


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


def closest_name(value: str, choices: Iterable[str]) -> str | None:
    """The choice a user most likely meant by `value`: the same name in other case, else the one that `value`
    begins or is the beginning of ('hrm' -> 'hrm_v1'), else one containing it (3+ characters), else the
    closest spelling; None when nothing is close."""
    choices = [str(choice) for choice in choices]
    wanted = str(value).strip().lower()
    if not wanted:
        return None
    for matches in (
        lambda c: c == wanted,
        lambda c: c.startswith(wanted) or wanted.startswith(c),
        lambda c: len(wanted) >= 3 and wanted in c,
    ):
        found = [choice for choice in choices if matches(choice.lower())]
        if found:
            return min(found, key=lambda choice: abs(len(choice) - len(wanted)))
    close = difflib.get_close_matches(wanted, [c.lower() for c in choices], n=1, cutoff=0.6)
    return next((c for c in choices if c.lower() == close[0]), None) if close else None


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
        guess = closest_name(str(value), error.validator_value)
        hint = f"; did you mean {guess!r}?" if guess is not None and guess != value else ""
        yield f"{key} must be one of {', '.join(map(str, error.validator_value))}, got {value!r}{hint}"
    elif kind == "type":
        yield f"{key} must be {_expected(error.schema)}, got {_kind(value)} {value!r}{_yaml_hint(value)}"
    elif kind == "maximum" and "at most" in error.schema.get("description", ""):
        why = error.schema["description"]
        yield f"{key} must be {_expected(error.schema)}, got {value!r} ({why[why.index('at most') :]})"
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
    """Why text that reads like a number is text: a quoted number, or NaN/infinity (never a setting)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        return " (write the number without quotes)" if math.isfinite(number) else " (not a finite number)"
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
    if "exclusiveMinimum" in node and "maximum" in node:
        bounds.append(f"in ({node['exclusiveMinimum']}, {node['maximum']}]")
    elif "exclusiveMinimum" in node:
        bounds.append(f"> {node['exclusiveMinimum']}")
    elif "maximum" in node and "minimum" not in node:
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


# ---- rules between keys ----------------------------------------------------------------------------------


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
        guess = closest_name(profile, profiles)
        hint = f"; did you mean {guess}?" if guess else ""
        known = ", ".join(profiles) or "none"
        raise ConfigError(f"{source}: profiles.{profile} is missing: unknown profile (known: {known}){hint}")
    own = {key: value for key, value in overrides.items() if key != "per_arch"}
    per_arch = overrides.get("per_arch") or {}
    if arch is None:
        arch = chosen_arch(params, profile)
    return deep_merge(own, per_arch.get(arch) or {})


def parse_override(item: str) -> tuple[str, Any]:
    """One `--set key.sub=value` (the `dvc exp run -S` syntax) -> (key, value read by `read_params`);
    ConfigError naming the item otherwise. The one parser of these strings (quickstart, doctor, compare)."""
    key, sep, raw_value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.global_batch_size=384")
    return key, read_params(raw_value, f"--set {item}", key)


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
    """`key.sub=value` strings (the `dvc exp run -S` syntax; value read by `parse_override`) written into params
    in place. Unchecked: call `check_params` on the result (a typo'd key is reported there, with a guess)."""
    for item in overrides:
        key, value = parse_override(item)
        set_value(params, key, value, f"--set {item!r}", source)


def set_value(
    params: dict[str, Any], key: str, value: Any, what: str, source: str | Path = DEFAULT_PARAMS
) -> None:
    """`params[a][b][c] = value` for `key` 'a.b.c' (as `dvc exp run -S a.b.c=value` writes it), creating missing
    mappings; ConfigError naming `what` where a section on the way is not a mapping."""
    node = params
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {source} has no section {part!r} under which to set {key!r}")
        node = child
    node[parts[-1]] = copy.deepcopy(value)
