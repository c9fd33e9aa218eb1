"""`hrm compare` through DVC's real experiment queue, and sharing an experiment through a DVC remote.

In a temporary git + DVC repo (this checkout's files): a tiny-profile comparison of hrm_v1 and transformer x 2
seeds, with one experiment planted to fail; then the same comparison again (it must reuse the three finished
runs and retry only the failed one); then one experiment pushed to a local-folder remote (`dvc exp push`) and
pulled into a fresh clone, where `dvc metrics diff` shows it and the model comes back without retraining.
Minutes on 2 cores (5 tiny runs): slow.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import GIT, copy_checkout, run

from hrm.compare import command
from hrm.quickstart import profile_overrides, set_param_args

pytestmark = pytest.mark.slow

ARCHS = ("hrm_v1", "transformer")
PLANTED = "cmp-tiny-transformer-s1"


def own_metrics(repo: Path, rev: str) -> dict:
    """The experiment's own metrics.json, read from its git commit (not through hrm compare)."""
    return json.loads(run(["git", "show", f"{rev}:reports/eval/metrics.json"], repo))["test"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare") / "repo"
    copy_checkout(root)
    run(["git", "init", "-q", "-b", "main"], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", "compare test"], root)
    return root


def compare_here(repo: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PYTHONPATH", str(repo))
    return command.compare(profile="tiny", archs=ARCHS, seeds=2, jobs=2, poll_s=2.0, command="test")


def test_compare_reuses_and_shows_failures(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # plant: the comparison's transformer seed-1 run, queued beforehand with a device that does not exist
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    bad = profile_overrides(params, "tiny", "transformer")
    bad["arch"]["name"], bad["train"]["seed"], bad["train"]["device"] = "transformer", 1, "bogus"
    run(["dvc", "exp", "run", "--queue", "-n", PLANTED, *set_param_args(bad)], repo)

    first = compare_here(repo, monkeypatch)
    runs = {r["name"]: r for r in first["runs"]}
    assert runs[PLANTED]["state"] == "failed" and "train.device" in runs[PLANTED]["error"]
    groups = {g["arch"]: g for g in first["groups"]}
    assert groups["hrm_v1"]["n"] == 2 and groups["transformer"]["n"] == 1
    assert groups["transformer"]["failed"] == [PLANTED]
    on_disk = json.loads((repo / "reports" / "compare" / "results.json").read_text(encoding="utf-8"))
    assert on_disk["runs"][3]["state"] == "failed"
    finished = {name: r["rev"] for name, r in runs.items() if r["state"] == "success"}
    assert len(finished) == 3

    # the same comparison again: the three finished runs are reused as they are, the failed one is retried
    second = compare_here(repo, monkeypatch)
    again = {r["name"]: r for r in second["runs"]}
    for name, rev in finished.items():
        assert again[name]["reused"] and again[name]["rev"] == rev
    assert again[PLANTED]["state"] == "success" and not again[PLANTED]["reused"]

    results = json.loads((repo / "reports" / "compare" / "results.json").read_text(encoding="utf-8"))
    for group in results["groups"]:
        assert group["n"] == 2 and group["failed"] == []
        members = [r for r in results["runs"] if r["arch"] == group["arch"]]
        for key in ("route_optimal_rate", "route_valid_rate", "exact_accuracy", "accuracy", "steps"):
            values = [own_metrics(repo, r["rev"])[key] for r in members]
            stat = group["stats"][key]
            assert stat["n"] == 2
            assert stat["mean"] == pytest.approx(statistics.fmean(values))
            assert stat["sd"] == pytest.approx(statistics.stdev(values))
        assert group["stats"]["steps_per_s"]["n"] == 2 and group["stats"]["steps_per_s"]["mean"] > 0
        assert all(r["curve"] for r in members)  # learning curves read from each experiment's commit
    page = (repo / "reports" / "compare" / "index.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "https://" not in page
    status = run(["dvc", "queue", "status"], repo)
    assert "Queued" not in status and "Running" not in status


def test_experiment_shared_through_a_remote_is_seen_in_a_fresh_clone(repo: Path, tmp_path: Path) -> None:
    name = "cmp-tiny-hrm_v1-s0"  # finished by the test above (module-scoped repo)
    if name not in run(["dvc", "exp", "list", "--name-only"], repo):
        pytest.fail(f"{name} is missing: the comparison of the test above failed or was not run")
    origin, storage, clone = tmp_path / "origin.git", tmp_path / "dvc-storage", tmp_path / "clone"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], repo)
    run(["dvc", "exp", "push", "origin", name], repo)  # git refs to origin, cached outputs to storage

    run(["git", "clone", "-q", "-b", "main", str(origin), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], clone)
    run(["dvc", "exp", "pull", "origin", name], clone)
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", name, "--json"], clone))
    assert "test.route_optimal_rate" in diff["reports/eval/metrics.json"]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone))
    assert name in json.dumps(shown)

    # the trained model comes through the remote, not from training
    fetched, original = tmp_path / "fetched.pt", tmp_path / "original.pt"
    run(["dvc", "get", ".", "models/hrm.pt", "--rev", name, "-o", str(fetched)], clone)
    run(["dvc", "get", ".", "models/hrm.pt", "--rev", name, "-o", str(original)], repo)
    assert fetched.stat().st_size > 0 and fetched.read_bytes() == original.read_bytes()
    assert not (clone / "checkpoints").exists() and not (clone / "models").exists()  # nothing trained there

    # the model registry: a version is an annotated git tag `hrm-model@<version>` (GTO's format) on the
    # experiment's commit; `dvc artifacts get` finds it by name, by --rev <version>, or the latest
    refs = run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], clone).splitlines()
    commit = next(line.split()[0] for line in refs if line.endswith(f"/{name}"))
    run([*GIT, "tag", "-a", "hrm-model@v0.1.0", commit, "-m", "Registering hrm-model v0.1.0"], clone)
    registered = tmp_path / "registered.pt"
    run(["dvc", "artifacts", "get", ".", "hrm-model", "--rev", "v0.1.0", "-o", str(registered)], clone)
    assert registered.read_bytes() == original.read_bytes()
