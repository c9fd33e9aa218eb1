"""The GitHub workflow and the pre-commit configuration: valid, and running what this project's CI runs."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


@pytest.mark.skipif(
    shutil.which("check-jsonschema") is None, reason="check-jsonschema (dev extra) not installed"
)
def test_workflow_is_valid_against_githubs_schema():
    done = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_runs_ci_run_on_the_projects_python():
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    steps = workflow["jobs"]["test"]["steps"]
    assert any(".ci/run" in step.get("run", "") for step in steps)
    python = next(
        s["with"]["python-version"] for s in steps if s.get("uses", "").startswith("actions/setup-python")
    )
    assert python == "3.11"  # pyproject: requires-python >= 3.11; the torch 2.13.0 CPU wheel on disk is cp311
    assert workflow["jobs"]["test"]["timeout-minutes"] <= 90


def test_pre_commit_runs_the_ruff_checks_of_ci():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff-check", "ruff-format"} <= hooks
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "ruff check ." in ci and "ruff format --check ." in ci
