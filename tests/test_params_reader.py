"""The one params reader (hrm.config.read_params, for params.yaml files and every `--set` value), the schema's
upper bounds and the rules between keys (hrm.rules.check_rules): whatever a user writes either loads or stops
with one ConfigError naming the file and key, before any work."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrm import config
from hrm.config import ConfigError, load_params, parse_override, read_params, run_params
from hrm.io import UserError
from hrm.rules import check_rules
from tests.conftest import REPO, repo_params


def params_text(**train: str) -> str:
    """params.yaml's own text with `train.<key>: <raw YAML>` lines replaced."""
    lines = (REPO / "params.yaml").read_text(encoding="utf-8").splitlines()
    for key, raw in train.items():
        index = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}:"))
        lines[index] = f"  {key}: {raw}"
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- numbers as YAML 1.2 (and DVC) read them


@pytest.mark.parametrize(("raw", "value"), [("1e-3", 1e-3), ("5E-4", 5e-4), (".5", 0.5), ("2e2", 200.0)])
def test_exponent_numbers_are_floats_in_a_set_and_in_a_file(tmp_path, raw, value):
    key, parsed = parse_override(f"train.lr={raw}")
    assert key == "train.lr" and isinstance(parsed, float) and parsed == value
    path = tmp_path / "params.yaml"
    path.write_text(params_text(lr=raw), encoding="utf-8")
    loaded = load_params(path)["train"]["lr"]
    assert isinstance(loaded, float) and loaded == value


def test_the_readmes_compare_example_passes_the_schema():
    params = load_params(REPO / "params.yaml")
    for item in ("train.lr=1e-3", "train.lr=5e-4"):
        assert run_params(params, "quick", [item])["train"]["lr"] in (1e-3, 5e-4)


@pytest.mark.parametrize(
    ("raw", "kept"), [("1", 1), ("yes", True), ("0x10", 16), ("'1e-3'", "1e-3"), ("~", None)]
)
def test_everything_else_reads_as_safe_load_reads_it(raw, kept):
    assert read_params(raw, "--set x") == kept == yaml.safe_load(raw)


# ---------------------------------------------------------------- values no run can use


@pytest.mark.parametrize("raw", [".nan", ".NaN", ".NAN", ".inf", "-.Inf", "+.INF", "1e999", "-1e400"])
def test_nan_and_infinity_are_refused_naming_the_key(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(params_text(lr=raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: train\.lr must be a finite number, got -?(nan|inf)$"):
        load_params(path)
    with pytest.raises(ConfigError, match=r"^--set train\.lr=.*: train\.lr must be a finite number"):
        parse_override(f"train.lr={raw}")


def test_nan_inside_a_list_is_named_by_its_index():
    with pytest.raises(ConfigError, match=r"evaluate\.segments\[1\] must be a finite number"):
        parse_override("evaluate.segments=[1, .nan]")


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-Infinity"])
def test_nan_as_text_is_a_type_error_that_says_why(raw):
    with pytest.raises(
        ConfigError, match=r"train\.lr must be a number > 0, got text .* \(not a finite number\)"
    ):
        run_params(load_params(REPO / "params.yaml"), None, [f"train.lr={raw}"])


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 strings
    path = tmp_path / "params.yaml"
    path.write_text(params_text() + "\n".join(lines) + "\n", encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(
        ConfigError, match=rf"^{path}: line \d+: YAML anchors \(&name\) and aliases \(\*name\)"
    ):
        load_params(path)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(ConfigError, match="anchors"):
        parse_override("train.x=[&a 1, *a]")
    with pytest.raises(ConfigError, match="anchors"):
        read_params("base: &b {lr: 1}\ntrain:\n  <<: *b\n", "p.yaml")


def test_deep_nesting_is_refused_not_a_recursion_error():
    with pytest.raises(ConfigError, match=f"nested deeper than {config.MAX_DEPTH} levels"):
        read_params("[" * 100_000, "--set x")


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path):
    text = params_text().encode("utf-8")
    offset = text.index(b"# the 18 JSON files")
    path = tmp_path / "params.yaml"
    path.write_bytes(text[:offset] + b"\xe9t\xe9" + text[offset:])  # Latin-1 "été"
    with pytest.raises(
        ConfigError, match=rf"^{path}: not UTF-8 text \(invalid continuation byte at byte {offset}\)$"
    ):
        load_params(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2025-01-01", r"YAML reads 2025-01-01 as a date"),
        ("!!binary aGVsbG8=", "as a bytes"),
        ("!!set {a, b}", "as a set"),
        ("{1: a}", "key 1 must be text"),
        ("1" * 5000, "not a readable value"),
        ("2025-13-45", "not a readable value"),
    ],
)
def test_values_that_are_not_plain_data_are_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_override(f"train.lr={raw}")


# ---------------------------------------------------------------- upper bounds, each with its reason


def bounded_keys() -> list[tuple[str, int | float, bool]]:
    """(dotted key, maximum, whether the bound is on the items of a list) of every bounded key of a full file."""
    root = config.schema()
    found = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        node = config._resolve(node, root)
        for name, child in node.get("properties", {}).items():
            child = config._resolve(child, root)
            key = f"{prefix}{name}"
            if "maximum" in child:
                found.append((key, child["maximum"], False))
            elif "maximum" in child.get("items", {}):
                found.append((key, child["items"]["maximum"], True))
            elif any("maximum" in option for option in child.get("anyOf", [])):
                found.append((key, next(o["maximum"] for o in child["anyOf"] if "maximum" in o), False))
            walk(child, f"{key}.")

    for section in ("generate", "validate", "arch", "train", "evaluate"):
        walk(root["properties"][section], f"{section}.")
    return found


def test_every_size_and_count_has_an_upper_bound_with_its_reason():
    keys = {key for key, _, _ in bounded_keys()}
    sizes = {
        "generate.rows", "generate.cols", "generate.train_bases", "generate.test_bases", "generate.max_attempts",
        "generate.count_cap", "generate.min_route_length", "generate.city.closures", "generate.city.hotspots",
        "arch.H_cycles", "arch.L_cycles", "arch.H_layers", "arch.L_layers", "arch.hidden_size", "arch.num_heads",
        "arch.expansion", "arch.puzzle_emb_ndim", "arch.puzzle_emb_len", "arch.halt_max_steps",
        "train.global_batch_size", "train.micro_batch_size", "train.epochs", "train.eval_interval",
        "train.threads", "evaluate.batch_size", "evaluate.segments", "evaluate.route_map_examples",
        "validate.plot_examples",
    }  # fmt: skip
    assert sizes <= keys, sorted(sizes - keys)
    root = config.schema()
    assert root["$defs"]["generate"]["properties"]["vehicles"]["maxItems"] == 64
    for key, maximum, _ in bounded_keys():
        if maximum <= 1:  # a probability, share or ratio: its range is its meaning
            continue
        node = root["$defs"][key.split(".")[0]]
        for part in key.split(".")[1:]:
            node = config._resolve(node, root)["properties"][part]
        assert f"{maximum:,}" in node.get("description", "") or str(maximum) in node.get("description", ""), (
            key
        )


@pytest.mark.parametrize(("key", "maximum", "items"), bounded_keys(), ids=lambda v: str(v))
def test_each_upper_bound_is_refused_naming_key_and_bound(key, maximum, items):
    params = repo_params()
    over = maximum + 1 if isinstance(maximum, int) else maximum * 2
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = [over] * len(node[last]) if items else over
    with pytest.raises(ConfigError) as caught:
        config.check_params(params, "params.yaml")
    shown = "[0]" if items else ""
    assert f"{key}{shown} must be " in str(caught.value) and f"{maximum}]" in str(caught.value)
    assert f"got {over!r}" in str(caught.value)


def test_a_vehicle_cost_and_the_vehicle_count_are_bounded():
    params = repo_params()
    params["generate"]["vehicles"][1]["class_cost"]["alley"] = 10**7
    with pytest.raises(
        ConfigError, match=r"vehicles\[1\]\.class_cost\.alley must be integer or null in \[1, 1000000\]"
    ):
        config.check_params(params)
    params = repo_params()
    params["generate"]["vehicles"] = [copy.deepcopy(params["generate"]["vehicles"][0])] * 65
    with pytest.raises(ConfigError, match=r"generate\.vehicles"):
        config.check_params(params)


def test_a_bound_gives_its_reason():
    with pytest.raises(
        ConfigError, match=r"generate\.rows must be an integer in \[4, 64\], got 65 \(at most 64: seq_len"
    ):
        run_params(load_params(REPO / "params.yaml"), "quick", ["generate.rows=65"])


# ---------------------------------------------------------------- rules between keys: one function


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.epochs=2"], "params.yaml: train.eval_interval 12 must divide train.epochs 2"),
        (["train.micro_batch_size=3"], "train.micro_batch_size 3 does not divide the 8 rows per process"),
        (["arch.num_heads=3"], "arch.num_heads must divide hidden_size"),
        (["generate.city.closures=[3, 1]"], r"generate.city.closures must be \[min, max\] with min <= max"),
        (["generate.difficulty.min_distinct_routes=5"], "min_distinct_routes must be at most the 4 vehicles"),
        (["validate.weights.tokens=0.5"], "validate.weights must sum to 1"),
        (["convert.augment=dihedral", "generate.cols=9"], "dihedral needs square maps"),
    ],
)
def test_check_rules_refuses_every_impossible_run(sets, message):
    merged = run_params(load_params(REPO / "params.yaml"), "quick", sets)  # passes the schema
    with pytest.raises(UserError, match=message):
        check_rules(merged, "params.yaml")


def test_check_rules_passes_every_profile_and_arch():
    params = load_params(REPO / "params.yaml")
    for profile in [None, *params["profiles"]]:
        for arch in ("hrm_v1", "transformer", "trm"):
            check_rules(run_params(params, profile, [f"arch.name={arch}"]), "params.yaml")


def test_the_batch_split_is_checked_for_the_world_size():
    merged = run_params(load_params(REPO / "params.yaml"), "quick", [])
    check_rules(merged, "params.yaml", world_size=2)
    with pytest.raises(UserError, match="not a multiple of the 3 processes"):
        check_rules(merged, "params.yaml", world_size=3)


# ---------------------------------------------------------------- suggestions name the real choice


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("hrm", "hrm_v1"),
        ("HRM_V1", "hrm_v1"),
        ("trn", "trm"),
        ("transfomer", "transformer"),
        ("hrm_v2", "hrm_v1"),
    ],
)
def test_a_value_suggestion_names_the_choice_most_likely_meant(typed, meant):
    with pytest.raises(
        ConfigError,
        match=f"arch.name must be one of hrm_v1, transformer, trm, got '{typed}'; did you mean '{meant}'",
    ):
        run_params(load_params(REPO / "params.yaml"), None, [f"arch.name={typed}"])


def test_closest_name_prefers_a_prefix_over_an_edit():
    assert config.closest_name("hrm", ["hrm_v1", "transformer", "trm"]) == "hrm_v1"
    assert config.closest_name("qick", ["quick", "tiny", "medium"]) == "quick"
    assert config.closest_name("zzz", ["quick", "tiny"]) is None


# ---------------------------------------------------------------- any value: loads or one ConfigError


def _loads_or_config_error(call: Any) -> None:
    try:
        call()
    except ConfigError:
        pass
    except UserError as err:  # a rule's own error class (the model's rules raise UserError)
        assert str(err).startswith("params.yaml"), err


REPO_PARAMS = load_params(REPO / "params.yaml")
YAMLISH = st.text(
    alphabet=st.sampled_from(list("0123456789.eE+-_:xob &*!|>[]{},'\"#~nNaifty\\\n\t ")), max_size=40
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.one_of(YAMLISH, st.text(max_size=40)),
    key=st.sampled_from(
        [
            "train.lr",
            "generate.rows",
            "arch.name",
            "evaluate.segments",
            "generate.city.closures",
            "train.micro_batch_size",
        ]
    ),
)
def test_any_set_value_loads_or_gives_a_config_error(raw, key):
    params = REPO_PARAMS
    _loads_or_config_error(lambda: check_rules(run_params(params, "tiny", [f"{key}={raw}"]), "params.yaml"))


@settings(max_examples=60, deadline=None)
@given(data=st.one_of(st.binary(max_size=60), YAMLISH.map(lambda t: t.encode("utf-8"))))
def test_any_file_bytes_load_or_give_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("p") / "params.yaml"
    path.write_bytes(params_text().encode("utf-8") + b"\nextra: " + data)
    with pytest.raises(ConfigError):  # `extra` is no key of the schema, when the bytes read at all
        load_params(path)
    _loads_or_config_error(lambda: read_params(data, Path("params.yaml")))
