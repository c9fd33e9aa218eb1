"""params.yaml against schemas/params.schema.json: the file and its profiles validate; a typo, a wrong type,
an out-of-range value or an unknown profile stops every entry point before any work, naming file and key."""

from __future__ import annotations

import importlib
import json

import pytest
from typer.testing import CliRunner

from hrm import config
from hrm.config import ConfigError, check_params, load_params, run_params
from tests.conftest import REPO, repo_params

STAGES = ("generate", "convert", "validate", "train", "evaluate")
TYPO = "train.global_batchsize: unknown key; did you mean train.global_batch_size?"


def test_schema_is_draft_2020_12_and_closed_everywhere():
    from jsonschema import Draft202012Validator

    schema = json.loads((REPO / "schemas" / "params.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    open_objects = []

    def walk(node, where):
        if isinstance(node, dict):
            if "properties" in node and "$ref" not in node and node.get("additionalProperties") is not False:
                open_objects.append(where)
            for key, child in node.items():
                walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{where}/{index}")

    walk(schema, "#")
    # the top level's `properties.<section>` only add `required` to a closed $defs section
    assert [w for w in open_objects if not w.startswith("#/properties/generate")] == []


def test_the_schema_holds_every_shape_the_generator_relies_on():
    """CityParams and DifficultyParams trust the schema for these (they check only rules between values):
    every key present in a full file, and the shapes that follow hrm.data.spec."""
    from hrm.data import spec

    root = config.schema()
    defs, full = root["$defs"], root["properties"]["generate"]
    assert set(full["required"]) == set(defs["generate"]["properties"])
    assert set(full["properties"]["city"]["required"]) == set(defs["city"]["properties"])
    difficulty = defs["generate"]["properties"]["difficulty"]["properties"]
    assert set(full["properties"]["difficulty"]["required"]) == set(difficulty)
    city = defs["city"]["properties"]
    assert city["class_traffic"]["required"] == list(spec.ROAD_CLASSES)
    assert city["class_traffic"]["additionalProperties"] is False
    thresholds = city["congestion_thresholds"]
    assert thresholds["minItems"] == thresholds["maxItems"] == len(spec.CONGESTION_LEVELS) - 1
    assert city["traffic_by_hour"]["minItems"] == city["traffic_by_hour"]["maxItems"] == 24
    assert city["hotspot_radius"]["items"]["minimum"] >= 1  # radius**2 divides the hotspot's load


def test_params_yaml_and_every_profile_validate():
    params = load_params(REPO / "params.yaml")
    assert {"quick", "tiny"} <= set(params["profiles"])
    for name in params["profiles"]:
        applied = run_params(params, name, (), "params.yaml")
        check_params(applied)  # the merged run's params are a full, valid set
        assert applied != params


def test_every_key_of_params_yaml_is_in_the_schema():
    def keys(tree, prefix=""):
        for key, value in tree.items():
            yield prefix + key
            if isinstance(value, dict) and key != "profiles":
                yield from keys(value, f"{prefix}{key}.")

    in_file = set(keys(repo_params()))
    in_schema = set(config.known_keys())
    assert in_file <= in_schema, sorted(in_file - in_schema)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["train"].update(global_batchsize=384), TYPO),
        (
            lambda p: p["arch"].update(eval_interval=2),
            "arch.eval_interval: unknown key; did you mean train.eval_interval?",
        ),
        (lambda p: p.update(trian={}), "trian: unknown key; did you mean train?"),
        (
            lambda p: p["train"].update(lr="0.0001"),  # safe_dump quotes it: text
            "train.lr must be a number > 0, got text '0.0001' (write the number without quotes)",
        ),
        (
            lambda p: p["train"].update(device="gpu"),
            "train.device must be one of auto, cpu, cuda, mps, got 'gpu'",
        ),
        (
            lambda p: p["train"].update(global_batch_size=0),
            "train.global_batch_size must be an integer in [1, 1048576], got 0",
        ),
        (
            lambda p: p["validate"].update(threshold=1.5),
            "validate.threshold must be a number in [0, 1], got 1.5",
        ),
        (lambda p: p["train"].pop("epochs"), "train.epochs: missing (required in a full params file)"),
        (
            lambda p: p["generate"]["vehicles"][2]["class_cost"].update(avenue=0),
            "generate.vehicles[2].class_cost.avenue must be integer or null in [1, 1000000], got 0",
        ),
        (
            lambda p: p["profiles"]["quick"]["train"].update(epoch=3),
            "profiles.quick.train.epoch: unknown key; did you mean profiles.quick.train.epochs?",
        ),
        (
            lambda p: p["profiles"]["tiny"]["arch"].update(hidden_size=-1),
            "profiles.tiny.arch.hidden_size must be an integer in [1, 8192]",
        ),
        (
            lambda p: p["profiles"]["tiny"].update(per_arch={"trn": {}}),
            "profiles.tiny.per_arch.trn: unknown name, must be one of hrm_v1, transformer, trm",
        ),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, change, message):
    params = repo_params()
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(__import__("yaml").safe_dump(params), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: {message}" or str(caught.value).startswith(f"{path}: {message}")


def test_several_problems_are_listed_together(tmp_path, params_file):
    path = params_file({"train": {"global_batchsize": 384, "epochs": "many"}})
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    text = str(caught.value)
    assert (
        text.startswith(f"{path}: 2 problems:") and TYPO in text and "train.epochs must be an integer" in text
    )


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(
        ConfigError,
        match=r"profiles.quik is missing: unknown profile \(known: quick, tiny.*did you mean quick",
    ):
        run_params(repo_params(), "quik")


def test_per_arch_overrides_apply_on_top_of_the_profile():
    params = repo_params()
    params["profiles"]["tiny"]["per_arch"] = {
        "hrm_v1": {"train": {"lr": 0.5}},
        "transformer": {"train": {"lr": 0.25}},
    }
    check_params(params)
    assert run_params(params, "tiny")["train"]["lr"] == 0.5
    params["arch"]["name"] = "transformer"
    assert run_params(params, "tiny")["train"]["lr"] == 0.25


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_stops_on_a_typo_before_any_work(stage, tmp_path, params_file):
    """What `dvc exp run -S train.global_batchsize=384` leaves in params.yaml: each stage exits 1 at once,
    and the outputs of an earlier good run stay as they were."""
    outputs = {
        key: tmp_path / key
        for key in ("raw", "hrm", "data_reports", "checkpoints", "train_log", "eval_reports")
    }
    for folder in outputs.values():
        folder.mkdir()
        (folder / "earlier.txt").write_text("earlier good output", encoding="utf-8")
    paths = {key: str(folder) for key, folder in outputs.items()} | {"model": str(tmp_path / "hrm.pt")}
    path = params_file({"paths": paths, "train": {"global_batchsize": 384}})
    app = importlib.import_module(f"stages.{stage}").app
    result = CliRunner().invoke(app, ["--params", str(path)])
    assert result.exit_code == 1, result.output
    assert TYPO in result.output and "Traceback" not in result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == sorted(
        [*outputs, *(f"{key}/earlier.txt" for key in outputs), "params.yaml"]
    )


def test_doctor_checks_profile_and_set_overrides(params_file):
    from hrm.cli import app

    path = params_file()
    runner = CliRunner()
    typo = runner.invoke(app, ["doctor", "--params", str(path), "-S", "train.global_batchsize=384"])
    assert typo.exit_code == 1 and TYPO in typo.output and "Traceback" not in typo.output
    bad = runner.invoke(app, ["doctor", "--params", str(path), "--profile", "quick", "-S", "arch.loss=mse"])
    assert (
        bad.exit_code == 1
        and "arch.loss must be one of stablemax_cross_entropy, softmax_cross_entropy" in bad.output
    )


def test_quickstart_sends_the_profile_with_per_arch_resolved():
    from hrm.config import profile_overrides
    from hrm.quickstart import set_param_args

    params = repo_params()
    params["profiles"]["tiny"]["per_arch"] = {"hrm_v1": {"train": {"lr": 0.5}}}
    args = set_param_args(profile_overrides(params, "tiny"))
    assert "-Strain.lr=0.5" in args and not any("per_arch" in arg for arg in args)
