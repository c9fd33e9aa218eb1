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
    assert bad_profile.exit_code == 1 and "train.epochs must be an integer >= 1, got 0" in bad_profile.output
