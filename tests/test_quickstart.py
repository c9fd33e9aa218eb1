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
