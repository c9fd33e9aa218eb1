"""The `hrm compare` command: plan every run, queue what is missing or failed, wait for the queue, collect the
records and write the report."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hrm.budget import baselines
from hrm.compare import dvc
from hrm.compare.plan import Planned, plan
from hrm.compare.report import markdown, write_outputs
from hrm.compare.stats import collect, group_stats, vehicle_names
from hrm.config import load_params
from hrm.io import UserError


def machine() -> dict[str, Any]:
    """The CPU the comparison ran on: float kernels differ between CPUs, so a run's digits belong to its CPU."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }


def compare(
    params_path: str | Path = "params.yaml",
    *,
    profile: str = "quick",
    archs: Sequence[str] = ("hrm_v1", "transformer"),
    seeds: int = 3,
    data_seeds: bool = False,
    sets: Sequence[str] = (),
    jobs: int = 1,
    name: str | None = None,
    out_dir: str | Path = "reports/compare",
    poll_s: float = 10.0,
    command: str = "",
    rev: str | None = None,
) -> dict[str, Any]:
    """Queue what is missing, run the queue, wait, collect; return results.json's content.

    `rev`: report the experiments that were queued from that commit, with its params.yaml, and queue nothing
    (a comparison that ran before later commits; DVC files experiments under the commit they ran from).
    """
    check_jobs(jobs)
    params = load_params(params_path) if rev is None else dvc.params_at(rev)
    runs = plan(
        params, profile=profile, archs=archs, seeds=seeds, data_seeds=data_seeds, sets=sets, name=name
    )
    out_dir = Path(out_dir)
    baseline = dvc.check_repository(out_dir) if rev is None else dvc.resolve_rev(rev)
    found = dvc.show_experiments(baseline)
    to_queue, reused, waiting = triage(runs, found, params, queue=rev is None)
    if rev is None:
        print(
            f"{len(runs)} runs: {len(reused)} finished (reused), {len(waiting)} already queued or running, "
            f"{len(to_queue)} to queue",
            flush=True,
        )
    else:
        announce_rev(rev, baseline, runs, found, reused, waiting)
    started = time.perf_counter()
    dvc.run_queue(to_queue, {run.name for run in runs}, jobs, poll_s)
    if len(reused) < len(runs):  # something ran since the first look
        found = dvc.show_experiments(baseline)
    records = collect(runs, found, params, reused)
    vehicles = vehicle_names(params)
    lines = baselines([r for r in records if r["state"] == "success"])
    results = {
        "name": name or f"cmp-{profile}",
        "command": command,
        "baseline": baseline,
        "profile": profile,
        "archs": list(archs),
        "seeds": seeds,
        "data_seeds": data_seeds,
        "sets": list(sets),
        "vehicles": vehicles,
        "machine": machine(),
        "baselines": lines,
        "groups": group_stats(records, vehicles, lines.get("monotone_path")),
        "runs": records,
    }
    write_outputs(results, out_dir)
    done = sum(r["state"] == "success" for r in records)
    print(f"{done}/{len(records)} runs succeeded; waited {time.perf_counter() - started:.0f} s", flush=True)
    print(markdown(results), flush=True)
    print(f"report: {out_dir / 'index.html'}", flush=True)
    return results


def triage(
    runs: Sequence[Planned], found: dict[str, list[dvc.Experiment]], params: dict[str, Any], queue: bool
) -> tuple[list[Planned], set[str], list[Planned]]:
    """(to queue, reused names, waited for): a finished experiment of a run's name is reused (its params must be
    the plan's: a clash is an error before anything is queued), a queued or running one waited for, the rest
    (missing or failed) queued when `queue`."""
    to_queue, reused, waiting = [], set(), []
    for run in runs:
        current = (found.get(run.name) or [None])[0]
        if current is not None and current.state in ("queued", "running"):
            waiting.append(run)
        elif current is not None and current.state == "success":
            differ = dvc.params_differ(params, run, current)
            if differ:
                raise UserError(
                    f"experiment {run.name} exists with other params ({', '.join(differ[:5])}): choose another "
                    f"--name or remove it (dvc exp remove {run.name})"
                )
            reused.add(run.name)
        elif queue and (current is None or current.state == "failed"):
            to_queue.append(run)
    return to_queue, reused, waiting


def announce_rev(
    rev: str,
    baseline: str,
    runs: Sequence[Planned],
    found: dict[str, list[dvc.Experiment]],
    reused: set[str],
    waiting: Sequence[Planned],
) -> None:
    """--rev: what DVC has of the planned runs at that commit; a UserError when it has none of them."""
    failed = sum(found[run.name][0].state == "failed" for run in runs if found.get(run.name))
    missing = sum(not found.get(run.name) for run in runs)
    if missing == len(runs):
        raise UserError(
            f"--rev {rev}: none of the {len(runs)} planned experiments ({runs[0].name}, ...) was run from "
            f"commit {baseline[:10]}; `dvc exp show --rev {baseline[:10]}` lists the ones that were (check "
            "--profile, --archs, --seeds, --set and --name)"
        )
    print(
        f"{len(runs)} runs at commit {baseline[:10]}: {len(reused)} finished, {len(waiting)} queued or running, "
        f"{failed} failed, {missing} not found; queueing nothing (--rev)",
        flush=True,
    )


def check_jobs(jobs: int) -> None:
    """`--jobs` in [1, cores]: DVC starts one worker process per job, each a whole training run."""
    cores = os.cpu_count() or 1
    if not 1 <= jobs <= cores:
        raise UserError(
            f"--jobs {jobs}: must be in [1, {cores}] (this machine's {cores} CPU cores; DVC starts one worker "
            "process per job, each running a whole experiment)"
        )


def check_all_succeeded(results: dict[str, Any], out_dir: str | Path) -> None:
    """UserError (exit 1) naming every run of `results` that did not succeed, with its error line: a comparison
    with a failed run is not the comparison that was asked for."""
    bad = [r for r in results["runs"] if r["state"] != "success"]
    if bad:
        lines = "\n  ".join(f"{r['name']}: {r['state']}: {r['error'] or 'no error recorded'}" for r in bad)
        raise UserError(
            f"{len(bad)} of {len(results['runs'])} runs did not succeed (report: {Path(out_dir) / 'index.html'}):"
            f"\n  {lines}"
        )
