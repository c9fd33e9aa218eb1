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


def test_quickstart_refuses_bad_input_without_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hrm.cli import app

    (tmp_path / "params.yaml").write_text("profiles:\n  quick: {train: {epochs: 1}}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(app, ["quickstart", "--profile", "nope"])
    assert missing.exit_code == 1 and "profiles.nope is missing" in missing.output
    assert "Traceback" not in missing.output
    malformed = runner.invoke(app, ["quickstart", "--set", "arch.name"])
    assert malformed.exit_code == 1 and "expected key=value" in malformed.output
