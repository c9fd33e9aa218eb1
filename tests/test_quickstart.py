"""The quick profile's overrides become `dvc exp run -S` arguments DVC understands."""

import yaml

from hrm.quickstart import flatten, set_param_args


def test_overrides_flatten_to_dotted_set_params():
    overrides = {
        "generate": {"rows": 12, "cols": 12},
        "train": {"lr": 0.001},
        "evaluate": {"segments": [1, 2]},
    }
    args = set_param_args(overrides)
    assert args == [
        "-Sgenerate.rows=12",
        "-Sgenerate.cols=12",
        "-Strain.lr=0.001",
        "-Sevaluate.segments=[1, 2]",
    ]
    # DVC parses each value as YAML: the round trip gives back the same values
    parsed = {a[2:].split("=", 1)[0]: yaml.safe_load(a.split("=", 1)[1]) for a in args}
    assert parsed == flatten(overrides)


def test_quickstart_refuses_bad_input_without_traceback(tmp_path, monkeypatch, params_file):
    from typer.testing import CliRunner

    from hrm.cli import app

    params_file({"profiles": {"quick": {"train": {"epochs": 1}}}})
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(app, ["quickstart", "--profile", "nope"])
    assert missing.exit_code == 1 and "profiles.nope is missing" in missing.output
    assert "Traceback" not in missing.output
    malformed = runner.invoke(app, ["quickstart", "--set", "arch.name"])
    assert malformed.exit_code == 1 and "expected KEY=VALUE" in malformed.output
    # a typo'd key stops before DVC runs anything (no git or dvc here: it would fail on those otherwise)
    typo = runner.invoke(app, ["quickstart", "--set", "train.global_batchsize=384"])
    assert typo.exit_code == 1 and "Traceback" not in typo.output
    assert "train.global_batchsize: unknown key; did you mean train.global_batch_size?" in typo.output
    bad_profile = runner.invoke(app, ["quickstart", "--profile", "quick", "--set", "train.epochs=0"])
    assert (
        bad_profile.exit_code == 1
        and "train.epochs must be an integer in [1, 10000000], got 0" in bad_profile.output
    )


# --------------------------------------------------------------------------------------- per-arch overrides


def _params():
    from pathlib import Path

    from hrm.config import load_params

    return load_params(Path(__file__).parent.parent / "params.yaml")


def test_profile_overrides_put_the_arch_set_on_top_of_the_profile():
    from hrm.config import profile_overrides

    params = _params()
    hrm = profile_overrides(params, "quick", "hrm_v1")
    trm = profile_overrides(params, "quick", "trm")
    assert "per_arch" not in hrm and "per_arch" not in trm
    assert hrm["arch"]["H_cycles"] == 2 and hrm["arch"].get("no_ACT_continue") is None
    assert (
        trm["arch"]["H_cycles"] == 3
        and trm["arch"]["L_layers"] == 2
        and trm["arch"]["no_ACT_continue"] is True
    )
    assert trm["arch"]["hidden_size"] == hrm["arch"]["hidden_size"] == 128  # the profile's width stays
    assert trm["train"] == hrm["train"] and trm["generate"] == hrm["generate"]
    assert not any(a.startswith("-Sper_arch") for a in set_param_args(trm))
    assert "-Sarch.H_cycles=3" in set_param_args(trm)
    assert params["profiles"]["quick"]["arch"]["H_cycles"] == 2  # params left untouched


def test_quick_profile_builds_every_arch_at_the_same_width():
    from hrm.config import deep_merge, profile_overrides
    from hrm.models import ARCHITECTURES, build_model

    params = _params()
    counts = {}
    for name in ARCHITECTURES:
        merged = deep_merge(params, profile_overrides(params, "quick", name))
        arch = {**merged["arch"], "name": name}
        head = build_model(
            arch, seq_len=64, vocab_size=24, num_puzzle_identifiers=5, batch_size=8, device="meta"
        )
        counts[name] = sum(p.numel() for p in head.parameters())
    # TRM's 2-block network has HRM's 1+1 blocks' parameters; the transformer has no Q head (2 x 128 + 2).
    assert counts["trm"] == counts["hrm_v1"] == counts["transformer"] + 258


def test_chosen_arch_order_set_then_profile_then_params():
    from hrm.config import chosen_arch

    params = {"arch": {"name": "hrm_v1"}, "profiles": {"p": {"arch": {"name": "transformer"}}, "q": {}}}
    assert chosen_arch(params, "q") == "hrm_v1"
    assert chosen_arch(params, "p") == "transformer"
    assert chosen_arch(params, "p", ["train.lr=1", "arch.name=trm"]) == "trm"


def test_bad_per_arch_tables_name_the_key():
    import pytest

    from hrm.config import ConfigError, check_params, profile_overrides

    params = _params()
    params["profiles"]["quick"]["per_arch"]["TRM"] = {"arch": {"H_cycles": 3}}
    with pytest.raises(ConfigError, match=r"profiles\.quick\.per_arch.*TRM"):
        check_params(params)
    params = _params()
    params["profiles"]["quick"]["per_arch"]["trm"] = {"arch": {"H_cycle": 3}}
    with pytest.raises(ConfigError, match=r"profiles\.quick\.per_arch\.trm\.arch\.H_cycle: unknown key"):
        check_params(params)
    with pytest.raises(ConfigError, match=r"profiles\.nope is missing"):
        profile_overrides(params, "nope", "trm")


def test_doctor_profile_applies_the_per_arch_set_then_the_overrides():
    from pathlib import Path

    from hrm.doctor import load_run_config

    params = Path(__file__).parent.parent / "params.yaml"
    trm = load_run_config(
        params, device="cpu", overrides=["arch.name=trm", "arch.L_cycles=5"], profile="quick"
    )
    assert trm.arch["name"] == "trm" and trm.arch["H_cycles"] == 3 and trm.arch["L_cycles"] == 5
    assert trm.arch["hidden_size"] == 128 and trm.arch["no_ACT_continue"] is True
    hrm = load_run_config(params, device="cpu", profile="quick")
    assert hrm.arch["H_cycles"] == 2 and hrm.arch["no_ACT_continue"] is False
