"""`hrm compare` without running DVC: the plan and its input checks, reading `dvc exp show --json`, the
statistics, the report. The real queue is exercised by tests/test_compare_queue.py (slow)."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import GIT

from hrm.budget import baselines
from hrm.compare import command, dvc, report
from hrm.compare.plan import expected_params, known_archs, plan
from hrm.compare.stats import collect, group_stats
from hrm.io import UserError
from hrm.quickstart import flatten, profile_overrides
from tests.conftest import REPO

ARCHS = ["hrm_v1", "transformer"]


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def test_known_archs_are_build_models(params):
    from hrm.models import ARCHITECTURES

    assert known_archs() == list(ARCHITECTURES)


def test_plan_is_every_arch_times_seed_with_the_profile_applied(params):
    runs = plan(params, profile="tiny", archs=ARCHS, seeds=2, available_archs=ARCHS)
    assert [r.name for r in runs] == [
        "cmp-tiny-hrm_v1-s0",
        "cmp-tiny-hrm_v1-s1",
        "cmp-tiny-transformer-s0",
        "cmp-tiny-transformer-s1",
    ]
    tiny = flatten(params["profiles"]["tiny"])
    for run in runs:
        assert run.overrides["arch.name"] == run.arch and run.overrides["train.seed"] == run.seed
        assert {k: run.overrides[k] for k in tiny} == tiny
        assert "generate.seed" not in run.overrides
    expected = expected_params(params, runs[0].overrides)
    assert expected["generate.rows"] == 8 and expected["arch.name"] == "hrm_v1"
    assert expected["train.lr"] == params["train"]["lr"]  # untouched keys keep HEAD's value


def test_data_seeds_and_set_grid(params):
    runs = plan(
        params,
        profile="tiny",
        archs=["transformer"],
        seeds=2,
        data_seeds=True,
        sets=["train.lr=0.001", "train.lr=0.002", "arch.hidden_size=64"],
        name="grid",
        available_archs=ARCHS,
    )
    assert len(runs) == 4  # 2 lr values x 1 arch x 2 seeds
    base = params["generate"]["seed"]
    assert sorted({r.data_seed for r in runs}) == [base, base + 1]
    assert {r.overrides["train.lr"] for r in runs} == {0.001, 0.002}
    assert all(r.overrides["arch.hidden_size"] == 64 for r in runs)
    assert len({r.name for r in runs}) == 4 and all(r.name.startswith("grid-transformer-s") for r in runs)
    assert {r.variant_label for r in runs} == {
        "arch.hidden_size=64 train.lr=0.001",
        "arch.hidden_size=64 train.lr=0.002",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "nope"}, "profiles.nope is missing: unknown profile"),
        ({"archs": ["hrm_v1", "gpt"]}, "unknown arch gpt"),
        ({"seeds": 0}, "at least 1 seed"),
        ({"profile": "quik"}, "did you mean quick"),
        ({"sets": ["train.learning_rate=1"]}, "params.yaml has no key train.learning_rate"),
        ({"sets": ["train.lrr=1"]}, "no key train.lrr; did you mean train.lr"),  # config.closest_key's guess
        ({"sets": ["train.lr"]}, "expected KEY=VALUE"),
        ({"sets": ["train.seed=3"]}, "hrm compare sets train.seed"),
        ({"name": "has space"}, "--name"),
        ({"data_seeds": True, "sets": ["generate.seed=1"]}, "--data-seeds"),
    ],
)
def test_plan_refuses_bad_input(params, kwargs, message):
    args = {"profile": "tiny", "archs": ARCHS, "seeds": 2, "available_archs": ARCHS, **kwargs}
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("-", r"\-")):
        plan(params, **args)


def test_profile_overrides_merge_per_arch_sets():
    params = {
        "profiles": {
            "p": {
                "train": {"lr": 1.0, "epochs": 2},
                "per_arch": {"trm": {"train": {"lr": 3.0}, "arch": {"x": 1}}},
            }
        }
    }
    assert profile_overrides(params, "p", "hrm_v1") == {"train": {"lr": 1.0, "epochs": 2}}
    assert profile_overrides(params, "p", "trm") == {"train": {"lr": 3.0, "epochs": 2}, "arch": {"x": 1}}
    from hrm.config import ConfigError

    with pytest.raises((UserError, ConfigError), match="profiles.q"):
        profile_overrides(params, "q", "trm")


def test_cli_bad_input_exits_1_before_anything_is_queued(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hrm.cli import app

    (tmp_path / "params.yaml").write_text(
        (REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args, message in [
        (["--archs", "hrm_v1,nope"], "unknown arch nope"),
        (["--profile", "huge"], "profiles.huge is missing"),
        (["--seeds", "0"], "at least 1 seed"),
        (["--set", "train.nope=1"], "no key train.nope"),
    ]:
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / ".dvc").exists() and not (tmp_path / "reports").exists()


@pytest.fixture
def committed_repo(tmp_path, monkeypatch) -> Path:
    """A git repo with one committed file `a.txt`, as the working directory."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    Path("a.txt").write_text("1", encoding="utf-8")
    subprocess.run([*GIT, "add", "a.txt"], check=True)
    subprocess.run([*GIT, "commit", "-qm", "a"], check=True)
    return tmp_path


def test_dirty_workspace_says_what_to_commit_or_stash(committed_repo):
    assert len(dvc.check_repository(Path("reports/compare"))) == 40
    Path("reports/compare").mkdir(parents=True)
    Path("reports/compare/results.md").write_text("x", encoding="utf-8")  # our own output does not count
    assert dvc.check_repository(Path("reports/compare"))
    Path("a.txt").write_text("2", encoding="utf-8")
    Path("new.py").write_text("", encoding="utf-8")
    with pytest.raises(UserError) as err:
        dvc.check_repository(Path("reports/compare"))
    text = str(err.value)
    assert "a.txt" in text and "new.py" in text and "git stash -u" in text and "git commit" in text
    assert "results.md" not in text


def test_rev_reports_an_earlier_commits_experiments_with_its_params(committed_repo, monkeypatch):
    """--rev: the experiments of that commit, judged by that commit's params.yaml; nothing is queued."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    Path("params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    subprocess.run([*GIT, "add", "params.yaml"], check=True)
    subprocess.run([*GIT, "commit", "-qm", "params"], check=True)
    old = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    params["train"]["lr"] = 0.5  # a later commit changes params.yaml
    Path("params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    subprocess.run([*GIT, "commit", "-qam", "later"], check=True)
    assert dvc.params_at(old[:8])["train"]["lr"] == 1.0e-4
    with pytest.raises(UserError, match="--rev nope: not a commit"):
        dvc.resolve_rev("nope")

    runs = plan(dvc.params_at(old), profile="tiny", archs=["hrm_v1"], seeds=2, available_archs=ARCHS)
    shown = fake_exp_show(old, runs[:1], {runs[0].name: {"route_optimal_rate": 0.25}})
    monkeypatch.setattr("hrm.compare.plan.known_archs", lambda: ARCHS)
    monkeypatch.setattr(dvc, "show_experiments", lambda baseline: dvc.parse_exp_show(shown, baseline))
    monkeypatch.setattr(dvc, "git_reader", lambda rev: lambda path: None)
    queued = []
    monkeypatch.setattr(dvc, "start_workers", queued.append)
    monkeypatch.setattr(dvc, "queue_status", lambda: ({}, 0))
    results = command.compare(profile="tiny", archs=["hrm_v1"], seeds=2, rev=old, out_dir=Path("out"))
    assert results["baseline"] == old and not queued
    assert [r["state"] for r in results["runs"]] == ["success", "missing"]
    assert results["runs"][0]["metrics"]["route_optimal_rate"] == 0.25


def test_experiments_are_asked_of_the_baseline_commit(monkeypatch):
    """dvc exp show lists HEAD's experiments unless given --rev: an earlier commit's would read as missing."""
    asked = []

    def fake_cmd(command, check=True):
        asked.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="[]", stderr="")

    monkeypatch.setattr(dvc, "_cmd", fake_cmd)
    assert dvc.show_experiments("e" * 40) == {}
    assert asked == [["dvc", "exp", "show", "--json", "--rev", "e" * 40]]


def test_a_report_under_another_out_folder_leaves_the_workspace_clean(committed_repo):
    """`--out reports/compare-ema` then `--out reports/compare-aug`: the first report must not block the second."""
    results = {"name": "t", "command": "c", "baseline": "b" * 40, "profile": "tiny", "seeds": 1}
    results.update({"data_seeds": False, "vehicles": [], "groups": [], "runs": []})
    report.write_outputs(results, Path("reports/compare-ema"))
    assert (Path("reports/compare-ema") / "results.json").is_file()
    assert len(dvc.check_repository(Path("reports/compare-aug"))) == 40
    Path("reports/compare-ema/stray.txt").write_text("x", encoding="utf-8")  # the whole folder is ignored
    assert dvc.check_repository(Path("reports/compare-aug"))


# ------------------------------------------------------------- reading DVC's answer and the statistics


def fake_exp_show(baseline: str, runs, metrics_by_name, failed=(), eval_file="reports/eval/metrics.json"):
    """The shape `dvc exp show --json` has in DVC 3.67 (checked against a real queue run)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    experiments = []
    for run in runs:
        full = expected_params(params, run.overrides)
        nested: dict = {}
        for key, value in full.items():
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        if run.name in failed:
            entry = {
                "executor": {"state": "failed", "local": {"log": None}},
                "name": run.name,
                "revs": [
                    {
                        "rev": "f" * 40,
                        "name": run.name,
                        "error": {"msg": "Experiment run failed", "type": ""},
                        "data": {"params": {"params.yaml": {"data": nested}}, "metrics": {}},
                    }
                ],
            }
        else:
            entry = {
                "executor": None,
                "name": run.name,
                "revs": [
                    {
                        "rev": f"{abs(hash(run.name)):040d}"[:40],
                        "name": run.name,
                        "data": {
                            "params": {"params.yaml": {"data": nested}},
                            "metrics": {
                                eval_file: {"data": {"test": metrics_by_name[run.name]}},
                                "reports/timing/train.json": {"data": {"wall_s": 10.0, "steps_per_s": 2.5}},
                            },
                        },
                    }
                ],
            }
        experiments.append(entry)
    return [
        {"rev": "workspace", "name": None, "data": {}},
        {"rev": baseline, "name": "main", "data": {}, "experiments": experiments},
    ]


def test_collect_stats_match_each_experiments_metrics_and_failures_show(params, tmp_path):
    runs = plan(params, profile="tiny", archs=ARCHS, seeds=3, available_archs=ARCHS)
    metrics = {}
    for i, run in enumerate(runs):
        rate = 0.1 * (i + 1)
        metrics[run.name] = {
            "route_optimal_rate": rate,
            "route_valid_rate": rate + 0.01,
            "exact_accuracy": rate,
            "accuracy": 0.9,
            "steps": 2.0,
            **{v: {"route_optimal_rate": rate / 2, "count": 4} for v in ("bike", "car", "van", "truck")},
        }
    failed_name = "cmp-tiny-transformer-s2"
    shown = fake_exp_show("b" * 40, runs, metrics, failed={failed_name})
    found = dvc.parse_exp_show(shown, "b" * 40)
    assert found[failed_name][0].state == "failed" and found[failed_name][0].metrics == {}
    records = collect(runs, found, params, reused={"cmp-tiny-hrm_v1-s0"}, curves=False)
    by_name = {r["name"]: r for r in records}
    assert by_name[failed_name]["state"] == "failed"
    assert by_name[failed_name]["error"] == "Experiment run failed"
    assert by_name["cmp-tiny-hrm_v1-s0"]["reused"] and not by_name["cmp-tiny-hrm_v1-s1"]["reused"]

    groups = {g["arch"]: g for g in group_stats(records, ["bike", "car", "van", "truck"])}
    hrm = [metrics[r.name]["route_optimal_rate"] for r in runs if r.arch == "hrm_v1"]
    stats = groups["hrm_v1"]["stats"]["route_optimal_rate"]
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(statistics.fmean(hrm))
    assert stats["sd"] == pytest.approx(statistics.stdev(hrm))
    assert (stats["min"], stats["max"]) == (min(hrm), max(hrm))
    assert groups["hrm_v1"]["vehicles"]["bike"]["route_optimal_rate"]["mean"] == pytest.approx(
        statistics.fmean(hrm) / 2
    )
    assert groups["hrm_v1"]["stats"]["steps_per_s"]["mean"] == 2.5
    assert groups["transformer"]["n"] == 2 and groups["transformer"]["failed"] == [failed_name]
    assert [e["name"] for e in groups["hrm_v1"]["experiments"]] == [
        r.name for r in runs if r.arch == "hrm_v1"
    ]

    results = {
        "name": "t",
        "command": "hrm compare --profile tiny",
        "baseline": "b" * 40,
        "profile": "tiny",
        "seeds": 3,
        "data_seeds": False,
        "vehicles": ["bike", "car", "van", "truck"],
        "groups": list(groups.values()),
        "runs": records,
    }
    report.write_outputs(results, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert written["groups"][0]["stats"]["route_optimal_rate"]["n"] == 3
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert failed_name in md and "Experiment run failed" in md
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1  # bars; no budget figure without curves
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_a_finished_experiment_with_other_params_is_not_counted(params):
    runs = plan(params, profile="tiny", archs=["hrm_v1"], seeds=1, available_archs=ARCHS)
    metrics = {runs[0].name: {"route_optimal_rate": 0.5}}
    shown = fake_exp_show("c" * 40, runs, metrics)
    shown[1]["experiments"][0]["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["lr"] = 9.0
    records = collect(runs, dvc.parse_exp_show(shown, "c" * 40), params, reused=set(), curves=False)
    assert records[0]["state"] == "failed" and "train.lr" in records[0]["error"]


def test_queue_status_and_failure_log_parsing(tmp_path):
    text = (
        "Task     Name                     Created    Status\n"
        "2d75874  cmp-tiny-transformer-s1  10:39 AM   Failed\n"
        "5d8d8fd  cmp-tiny-transformer-s1  10:41 AM   Running\n"
        "4d895b3  cmp-tiny-hrm_v1-s0       10:28 AM   Success\n"
        "\nWorker status: 1 active, 0 idle\n"
    )
    statuses, workers = dvc.parse_queue_status(text)
    assert statuses == {"cmp-tiny-transformer-s1": ["Failed", "Running"], "cmp-tiny-hrm_v1-s0": ["Success"]}
    assert workers == 1
    log = tmp_path / "run.out"
    log.write_text(
        "Running stage 'train':\n> python -m stages.train --params params.yaml\n"
        "error: params.yaml: train.device must be auto, cpu, cuda or mps, got 'bogus'\n"
        "ERROR: failed to reproduce 'train': exited with 1\nERROR: failed to reproduce 'train': exited with 1\n",
        encoding="utf-8",
    )
    text = dvc._failure_text(str(log), "fallback")
    assert "train.device must be" in text and text.count("failed to reproduce") == 1
    from hrm.evaluation.plots import tsv_points

    assert dict(tsv_points("step\texact_accuracy\n2\t0.5\n4\t0.75\n5\t", "exact_accuracy")) == {
        2: 0.5,
        4: 0.75,
    }


def test_waiting_trusts_no_worker_count_while_a_run_runs(monkeypatch):
    """`dvc queue status` may report 0 workers while one is busy: keep waiting; restart workers only after
    entries have stayed queued with nothing running."""
    answers = iter(
        [
            ({"a": ["Running"], "b": ["Queued"]}, 0),  # busy worker did not answer: not an error
            ({"a": ["Success"], "b": ["Queued"]}, 0),
            ({"a": ["Success"], "b": ["Queued"]}, 0),  # still nothing running: start workers again
            ({"a": ["Success"], "b": ["Running"]}, 1),
            ({"a": ["Success"], "b": ["Failed", "Success"], "other": ["Queued"]}, 1),  # not ours: ignored
        ]
    )
    started = []
    monkeypatch.setattr(dvc, "queue_status", lambda: next(answers))
    monkeypatch.setattr(dvc, "start_workers", lambda jobs: started.append(jobs))
    clock = iter([0.0, 0.0, 70.0])  # idle from the 2nd answer; 70 s later at the 3rd
    monkeypatch.setattr(dvc.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(dvc.time, "sleep", lambda s: None)
    dvc.wait_for({"a", "b"}, poll_s=0.0, jobs=2, idle_restart_s=60.0)
    assert started == [2]


def test_budget_curves_count_compute_and_draw_the_runs_own_baselines(params, tmp_path, monkeypatch):
    """The compute axis of each eval point (samples from train/count, segments = step x batch, FLOPs =
    segments x the arch's segment FLOPs) and the baseline lines, checked against the runs' own files."""
    from hrm.models.config import ModelConfig
    from hrm.models.flops import segment_flops

    runs = plan(params, profile="tiny", archs=ARCHS, seeds=2, available_archs=ARCHS)
    metrics, files = {}, {}
    for i, run in enumerate(runs):
        metrics[run.name] = {
            "route_optimal_rate": 0.3,
            "accuracy": 0.9,
            "monotone_path": {"route_optimal_rate": 0.6, "accuracy": 0.95},
            "vehicle_blind": {"route_optimal_rate": 0.55 + 0.01 * i, "accuracy": 0.94},
            "copy_input": {"route_optimal_rate": 0.0, "accuracy": 0.9},
        }
        rates = {2: 0.1, 4: 0.25 + 0.1 * i, 6: 0.55 + 0.1 * i}  # seeds differ; the mean curve decides
        files[run.name] = {
            "eval/route_optimal_rate": "step\troute_optimal_rate\n"
            + "".join(f"{k}\t{v}\n" for k, v in rates.items()),
            "eval/exact_accuracy": "step\texact_accuracy\n2\t0.0\n4\t0.2\n6\t0.5\n",
            "train/count": "step\tcount\n" + "".join(f"{k}\t{k % 3}\n" for k in range(1, 7)),
        }
    shown = fake_exp_show("d" * 40, runs, metrics)
    found = dvc.parse_exp_show(shown, "d" * 40)
    rev_to_name = {found[run.name][0].rev: run.name for run in runs}

    def reader(rev):
        def read(path):
            kind = path.split("plots/metrics/")[-1].removesuffix(".tsv")
            return files[rev_to_name[rev]].get(kind)

        return read

    monkeypatch.setattr(dvc, "git_reader", reader)
    records = collect(runs, found, params, reused=set())
    batch = params["profiles"]["tiny"]["train"]["global_batch_size"]
    for record, run in zip(records, runs, strict=True):
        arch = {
            **params["arch"],
            **params["profiles"]["tiny"]["arch"],
            "name": run.arch,
            "forward_dtype": "float32",
        }
        config = ModelConfig.from_arch(
            arch, seq_len=8 * 8, vocab_size=24, num_puzzle_identifiers=5, batch_size=1
        )
        per_segment = segment_flops(config).total
        assert [p["step"] for p in record["curve"]] == [2, 4, 6]
        for point in record["curve"]:
            step = point["step"]
            assert point["segments"] == step * batch
            assert point["samples"] == batch + sum(k % 3 for k in range(1, step))
            assert point["flops"] == pytest.approx(step * batch * per_segment)
        assert record["curve"][1]["route_optimal_rate"] == float(
            files[run.name]["eval/route_optimal_rate"].split()[5]
        )
        assert record["curve"][0]["accuracy"] is None  # no token-accuracy TSV: no value, not 0

    lines = baselines(records)
    assert lines["monotone_path"]["route_optimal_rate"]["mean"] == 0.6
    blind = [metrics[r.name]["vehicle_blind"]["route_optimal_rate"] for r in runs]
    assert lines["vehicle_blind"]["route_optimal_rate"] == {
        "mean": pytest.approx(statistics.fmean(blind)),
        "min": min(blind),
        "max": max(blind),
    }
    groups = {g["arch"]: g for g in group_stats(records, [], lines["monotone_path"])}
    reach = groups["hrm_v1"]["budget"]["reach"]
    # mean curve of the two seeds: 0.1, 0.30, 0.60 -> >= 20% at step 4, >= 50% and >= monotone (0.6) at step 6
    assert reach["20%"]["mean"]["step"] == 4 and reach["50%"]["mean"]["step"] == 6
    assert reach["monotone baseline"]["mean"]["step"] == 6
    assert [p and p["step"] for p in reach["monotone baseline"]["seeds"]] == [None, 6]
    assert groups["hrm_v1"]["budget"]["last"]["route_optimal_rate"] == pytest.approx(0.6)

    results = {
        "name": "b",
        "command": "c",
        "baseline": "d" * 40,
        "profile": "tiny",
        "seeds": 2,
        "data_seeds": False,
        "vehicles": [],
        "baselines": lines,
        "groups": list(groups.values()),
        "runs": records,
        "machine": command.machine(),
    }
    report.write_outputs(results, tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2 and "Budget" in page
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "best monotone path 60.0%" in md and "first >= monotone baseline" in md
    assert "step 6: " in md and results["machine"]["cpu_capability"] in md
