"""The README is a front page whose every promise holds: its two commands, its CPU commands (the ones
`hrm quickstart` prints, run on the tiny profile by tests/test_quickstart_run.py), its numbers (the reference
runs in docs/results/quick-spread.json, rendered by bench/quick_spread.py) and its links."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

from hrm.compare.plan import plan
from hrm.config import load_params, run_params
from hrm.quickstart import REFERENCE, next_commands, verdict
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_is_a_front_page_that_starts_with_the_two_commands() -> None:
    assert len(README.splitlines()) <= 200
    assert _commands(_blocks(README)[0]) == [
        'python3 -m pip install -e ".[dev]" torch==2.13.0 && hrm quickstart',
        "python3 -m pytest",
    ]
    assert (REPO / ".ci" / "run").read_text().rstrip().endswith("python3 -m pytest")
    for heading in (
        "### 1. Check the pipeline on a CPU",
        "### 2. One GPU",
        "### 3. Several GPUs or machines",
    ):
        assert heading in README


def test_the_cpu_commands_are_the_quickstarts_own_hints() -> None:
    """Lines 2-4 of the CPU path are what `hrm quickstart` prints after the quick run; the same function's
    tiny-profile hints are run by tests/test_quickstart_run.py, so none of these can rot unseen."""
    block = next(b for b in _blocks(README) if b.startswith("hrm quickstart"))
    commands = _commands(block)
    hints = [c for c, _ in next_commands("quick", "quick", "hrm_v1", Path("reports/eval"))]
    assert commands[0] == "hrm quickstart" and commands[1:4] == hints
    # the compare line plans (every run checked as its stages will check it) without queueing anything
    argv = shlex.split(commands[4])
    assert argv[:2] == ["hrm", "compare"]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    runs = plan(
        load_params(REPO / "params.yaml"),
        profile=options["--profile"],
        archs=options["--archs"].split(","),
        seeds=int(options["--seeds"]),
    )
    assert len(runs) == int(options["--seeds"]) * len(options["--archs"].split(","))
    assert int(options["--jobs"]) <= 2  # fits the two cores this README is measured on


def test_the_numbers_are_the_reference_runs() -> None:
    reference = json.loads((REPO / REFERENCE).read_text(encoding="utf-8"))
    spread = _bench("quick_spread")
    assert spread.readme_table(reference) in README
    results = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    assert spread.markdown(reference) in results

    # the README's sample output is the verdict of the reference run of seed 0 under native kernels
    run = next(
        r for r in reference["runs"] if r["arch"] == "hrm_v1" and r["seed"] == 0 and r["kernels"] == "native"
    )
    test = {
        "route_optimal_rate": run["route_optimal_rate"],
        "route_valid_rate": run["route_valid_rate"],
        "accuracy": run["accuracy"],
        "monotone_path": {"route_optimal_rate": run["baselines"]["monotone_path"]},
        "copy_input": {"accuracy": run["baselines"]["copy_input_accuracy"]},
    }
    settings = run_params(load_params(REPO / "params.yaml"), "quick")
    for line in verdict(test, settings, "hrm_v1", reference, run["weights_sha256"]):
        assert line in README, line


def test_every_link_in_the_readme_and_docs_resolves() -> None:
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                slugs = {
                    re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                    for h in re.findall(r"^#+ (.*)$", linked.read_text(encoding="utf-8"), flags=re.M)
                }
                assert anchor in slugs, f"{page.name}: {target}"


def test_the_quick_profile_pins_its_thread_count() -> None:
    """The quickstart's number depends on the CPU's kernels, not on its core count: one torch thread, always."""
    for arch in ("hrm_v1", "trm", "transformer"):
        settings = run_params(load_params(REPO / "params.yaml"), "quick", [f"arch.name={arch}"])
        assert settings["train"]["threads"] == 1


def test_every_compare_example_in_the_docs_plans_without_error() -> None:
    """Each `hrm compare` line of the README and docs (a line continued with a backslash joined to the next)
    is planned as the command plans it: every run checked against the schema and the rules between keys, so an
    example that would queue runs that fail (`--set train.lr=1e-3` read as text, epochs that eval_interval does
    not divide) fails here."""
    params = load_params(REPO / "params.yaml")
    found = 0
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")
        for line in text.splitlines():
            if not line.startswith("hrm compare ") or "..." in line:
                continue
            argv = shlex.split(line.split("  #", 1)[0])[2:]
            options: dict[str, list[str]] = {}
            while argv:
                flag = argv.pop(0)
                takes_value = flag not in ("--data-seeds",)
                options.setdefault(flag, []).append(argv.pop(0) if takes_value else "")
            runs = plan(
                params,
                profile=options.get("--profile", ["quick"])[0],
                archs=options.get("--archs", ["hrm_v1,transformer"])[0].split(","),
                seeds=int(options.get("--seeds", ["3"])[0]),
                data_seeds="--data-seeds" in options,
                sets=options.get("--set", []),
                name=options.get("--name", [None])[0],
            )
            assert runs, line
            found += 1
    assert found >= 8
