"""`hrm compare`: every arch x seed (x `--set` variant) as a DVC experiment on DVC's own queue, then mean, sd, min
and max per arch, each number traceable to its experiments (name and git rev): one run is not an answer, the quick
profile moves by several points with the seed or the machine. DVC is the state: a second call reuses finished
experiments, waits for queued or running ones (a Ctrl-C'ed call) and queues only what is missing or failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import itertools
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hrm.budget import baselines, group_budget, plot_budget, run_baselines, run_curve, segment_flops_of
from hrm.config import (
    DEFAULT_PARAMS,
    check_params,
    closest_name,
    load_params,
    parse_override,
    profile_overrides,
    set_value,
)
from hrm.evaluation import metrics as M
from hrm.io import UserError, atomic_write_json, atomic_write_text, staged_directory
from hrm.quickstart import flatten, set_param_args
from hrm.rules import check_rules

# (metric key under test.*, label); ACT steps = mean segment where the Q-head would halt.
METRICS = tuple(
    (name, M.METRICS[name].label) for name in (M.ROUTE_OPTIMAL, M.ROUTE_VALID, M.EXACT, M.TOKEN, M.STEPS)
)
TIMING = (("wall_s", "train wall s"), ("steps_per_s", "train steps/s"))
RATES = {M.ROUTE_OPTIMAL, M.ROUTE_VALID, M.EXACT, M.TOKEN}
# compare sets these itself: one per run
OWNED_KEYS = ("arch.name", "train.seed")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,60}$")
STATE_RANK = {"success": 0, "running": 1, "queued": 2, "failed": 3}


@dataclass(frozen=True)
class Planned:
    """One run of the comparison: its experiment name and every override it is queued with."""

    name: str
    arch: str
    seed: int
    data_seed: int | None
    variant: tuple[tuple[str, Any], ...]  # the --set values of this grid point, sorted by key
    overrides: dict[str, Any] = field(hash=False, compare=False)  # flat: profile + per-arch + variant + seeds

    @property
    def variant_label(self) -> str:
        return " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in self.variant) or "(profile)"


@dataclass
class Experiment:
    """What `dvc exp show --json` says about one experiment of the current baseline."""

    name: str
    state: str  # success | running | queued | failed
    rev: str
    params: dict[str, Any]  # flat params.yaml
    metrics: dict[str, dict[str, Any]]  # metrics file -> its data
    error: str | None = None
    timestamp: str = (
        ""  # ISO time of the experiment's commit ("" unknown): the newest of a name's entries first
    )


# ---------------------------------------------------------------- the plan (all checks before any queueing)


def known_archs() -> list[str]:
    """The architectures `build_model` accepts (one list: hrm.models.ARCHITECTURES)."""
    from hrm.models import ARCHITECTURES  # imports torch: only here

    return list(ARCHITECTURES)


def parse_sets(items: Sequence[str], params: dict[str, Any]) -> list[dict[str, Any]]:
    """`--set key=value` items -> grid points. The same key given twice is two variants (a grid axis);
    different keys combine. Values are YAML, as `dvc exp run -S` reads them."""
    known = flatten({k: v for k, v in params.items() if k != "profiles"})
    axes: dict[str, list[Any]] = {}
    for item in items:
        key = item.partition("=")[0].strip()
        if "=" not in item or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. train.lr=0.001")
        if key in OWNED_KEYS:
            raise UserError(f"--set {key}: hrm compare sets {key} per run; use --archs / --seeds instead")
        if key not in known and not any(k.startswith(key + ".") for k in known):
            close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise UserError(f"--set {key}: params.yaml has no key {key}{hint}")
        value = parse_override(item)[1]
        if value not in axes.setdefault(key, []):
            axes[key].append(value)
    keys = sorted(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


def _variant_tag(variant: dict[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(variant, sort_keys=True).encode("utf-8")).hexdigest()
    return f"-v{digest[:6]}" if variant else ""


def plan(
    params: dict[str, Any],
    *,
    profile: str,
    archs: Sequence[str],
    seeds: int,
    data_seeds: bool = False,
    sets: Sequence[str] = (),
    name: str | None = None,
    available_archs: Sequence[str] | None = None,
) -> list[Planned]:
    """Every run of the comparison, validated: a UserError here means nothing was queued."""
    profiles = params.get("profiles")
    if not isinstance(profiles, dict) or not isinstance(profiles.get(profile), dict):
        names = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else "none"
        raise UserError(f"--profile {profile}: params.yaml has no profiles.{profile} (profiles: {names})")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: need at least 1 seed per arch")
    available = list(available_archs) if available_archs is not None else known_archs()
    if not archs:
        raise UserError("--archs: give at least one arch")
    unknown = [a for a in archs if a not in available]
    if unknown:
        guesses = [guess for guess in (closest_name(a, available) for a in unknown) if guess]
        hint = f"; did you mean {', '.join(guesses)}?" if guesses else ""
        raise UserError(f"--archs: unknown arch {', '.join(unknown)} (known: {', '.join(available)}){hint}")
    if len(set(archs)) != len(archs):
        raise UserError(f"--archs: an arch is listed twice: {','.join(archs)}")
    prefix = name or f"cmp-{profile}"
    if not NAME_PATTERN.match(prefix):
        raise UserError(f"--name {prefix!r}: use letters, digits, '-' and '_' (it becomes a git ref)")
    variants = parse_sets(sets, params)
    if data_seeds and any("generate.seed" in v for v in variants):
        raise UserError("--set generate.seed: --data-seeds sets generate.seed per run; drop one of them")

    runs = []
    for variant in variants:
        tag, items = _variant_tag(variant), tuple(sorted(variant.items()))
        for arch in archs:
            merged = {**flatten(profile_overrides(params, profile, arch)), **variant}
            first_seed = int(merged.get("train.seed", params.get("train", {}).get("seed", 0)))
            first_data = int(merged.get("generate.seed", params.get("generate", {}).get("seed", 0)))
            for i in range(seeds):
                seed, data_seed = first_seed + i, first_data + i if data_seeds else None
                overrides = {**merged, "arch.name": arch, "train.seed": seed}
                if data_seeds:
                    overrides["generate.seed"] = data_seed
                run_name = f"{prefix}-{arch}-s{seed}" + (f"-d{i}" if data_seeds else "") + tag
                runs.append(Planned(run_name, arch, seed, data_seed, items, overrides))
    for run in runs:
        check_run(params, run, profile)
    return runs


def params_of(params: dict[str, Any], run: Planned) -> dict[str, Any]:
    """The params.yaml a run sees, nested: HEAD's params with the run's -S values written in (as DVC does)."""
    merged = {key: value for key, value in params.items() if key != "profiles"}
    merged = json.loads(json.dumps(merged))  # a copy, in the types DVC writes back (JSON values)
    for key, value in run.overrides.items():
        set_value(merged, key, value, f"run {run.name}: -S {key}")
    return merged


def check_run(params: dict[str, Any], run: Planned, profile: str) -> None:
    """One planned run checked as its stages will check it (schema, then every rule between keys: eval_interval
    divides epochs, the micro-batch divides the batch, the model's and the generator's rules), before anything
    is queued: a UserError naming the run, its variant and the broken rule."""
    where = f"run {run.name} (profile {profile}, arch {run.arch}, {run.variant_label})"
    try:
        full = params_of(params, run)
        check_params(full, DEFAULT_PARAMS)
        check_rules(full, DEFAULT_PARAMS)
    except UserError as err:
        raise UserError(f"{where}: {err}; nothing was queued") from None


def expected_params(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The flat params.yaml a run of `overrides` sees (HEAD's params with the -S values applied)."""
    flat = flatten(params)
    for key, value in overrides.items():
        for old in [k for k in flat if k.startswith(key + ".")]:
            del flat[old]  # a whole mapping replaced
        flat[key] = value
    return flat


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def params_differ(params: dict[str, Any], run: Planned, experiment: Experiment) -> list[str]:
    """The keys whose values in `experiment` are not what `run` plans (empty: the experiment is this run)."""
    expected, actual = expected_params(params, run.overrides), experiment.params
    return sorted(k for k in set(expected) | set(actual) if not _same(expected.get(k), actual.get(k)))


# ---------------------------------------------------------------- DVC and git


def _cmd(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-8:]
        raise UserError(f"`{shlex.join(command)}` failed (exit {result.returncode}):\n" + "\n".join(tail))
    return result


def check_repository(out_dir: Path) -> str:
    """HEAD's sha; refuse a dirty workspace (DVC would run the uncommitted files while the results name HEAD)."""
    if shutil.which("dvc") is None:
        raise UserError("dvc is not on PATH: install the project first (see README)")
    head = _cmd(["git", "rev-parse", "--verify", "HEAD"], check=False)
    if head.returncode != 0:
        raise UserError("hrm compare needs a git checkout with at least one commit (a clone of this repo)")
    status = _cmd(["git", "status", "--porcelain", "--untracked-files=all"]).stdout.splitlines()
    out_prefix = out_dir.as_posix().rstrip("/") + "/"
    dirty = [line[3:] for line in status if line and not line[3:].startswith(out_prefix)]
    if dirty:
        shown = "\n  ".join(dirty[:10]) + ("\n  ..." if len(dirty) > 10 else "")
        raise UserError(
            "the workspace has uncommitted changes; experiments are queued from HEAD plus these files, so the "
            f"results would not match any commit:\n  {shown}\n"
            "commit them (git add -A && git commit -m '...') or stash them (git stash -u), then run again"
        )
    return head.stdout.strip()


def resolve_rev(rev: str) -> str:
    """The full sha of `rev`, or a UserError naming it."""
    result = _cmd(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], check=False)
    if result.returncode != 0:
        raise UserError(f"--rev {rev}: not a commit of this repository")
    return result.stdout.strip()


def params_at(rev: str) -> dict[str, Any]:
    """params.yaml as it was at `rev`, checked like the workspace's."""
    import tempfile

    sha = resolve_rev(rev)
    shown = subprocess.run(["git", "show", f"{sha}:params.yaml"], capture_output=True, check=False)
    if shown.returncode != 0:
        raise UserError(f"--rev {rev}: commit {sha[:10]} has no params.yaml")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_bytes(shown.stdout)  # as committed: the reader names a non-UTF-8 byte
        try:
            return load_params(path)
        except UserError as err:
            raise UserError(f"--rev {rev}: params.yaml of commit {sha[:10]}: {err}") from None


def _state(entry: dict[str, Any], rev: dict[str, Any]) -> str:
    state = (entry.get("executor") or {}).get("state")
    if rev.get("error") or state == "failed":
        return "failed"
    return state if state in ("queued", "running") else "success"


def _failure_text(log_path: str | None, fallback: str) -> str:
    """The lines of a failed run's log that say why: our stages' `error:` line, DVC's ERROR lines."""
    if not log_path or not Path(log_path).is_file():
        return fallback
    lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    picked = [ln.strip() for ln in lines if ln.startswith(("error:", "ERROR:")) or "Error:" in ln]
    unique = list(dict.fromkeys(picked))
    return " | ".join(unique[-3:]) if unique else (lines[-1].strip() if lines else fallback)


def parse_exp_show(shown: list[dict[str, Any]], baseline: str) -> dict[str, list[Experiment]]:
    """name -> the experiments of `baseline` with that name (a re-queued failure leaves two), best first, the
    newest first among equals (a retried run that failed again shows its own error, not the earlier one's)."""
    found: dict[str, list[Experiment]] = {}
    for commit in (c for c in shown if c.get("rev") == baseline):
        for entry in commit.get("experiments") or []:
            if not entry.get("revs"):
                continue
            rev = entry["revs"][0]
            name = entry.get("name") or rev.get("name") or rev.get("rev", "")[:7]
            data = rev.get("data") or {}
            state = _state(entry, rev)
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            metrics = {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()}
            error = None
            if state == "failed":
                log = ((entry.get("executor") or {}).get("local") or {}).get("log")
                error = _failure_text(log, (rev.get("error") or {}).get("msg") or "experiment failed")
                metrics = {}  # a failed run's commit holds the baseline's files, not its own
            timestamp = str(data.get("timestamp") or "")
            experiment = Experiment(
                name, state, rev.get("rev", ""), flatten(params), metrics, error, timestamp
            )
            found.setdefault(name, []).append(experiment)
    for entries in found.values():
        entries.sort(key=lambda e: e.timestamp, reverse=True)
        entries.sort(key=lambda e: STATE_RANK.get(e.state, 9))
    return found


def show_experiments(baseline: str) -> dict[str, list[Experiment]]:
    # --rev: DVC lists the experiments of HEAD only unless told the baseline (hrm compare --rev)
    result = _cmd(["dvc", "exp", "show", "--json", "--rev", baseline])
    try:
        shown = json.loads(result.stdout)
    except json.JSONDecodeError as err:
        raise UserError(f"`dvc exp show --json` printed no JSON ({err}): {result.stdout[:200]!r}") from err
    return parse_exp_show(shown, baseline)


def start_workers(jobs: int) -> None:
    """`dvc queue start`: its workers are detached and inherit our output handles, so they go to a file;
    a pipe would block us until the last worker exits."""
    import tempfile

    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as output:
        code = subprocess.run(
            ["dvc", "queue", "start", "--jobs", str(jobs)], stdout=output, stderr=output, check=False
        ).returncode
        if code != 0:
            output.seek(0)
            raise UserError(f"`dvc queue start` failed (exit {code}): {output.read().strip()[-500:]}")


def parse_queue_status(text: str) -> tuple[dict[str, list[str]], int]:
    """`dvc queue status` -> (name -> statuses, one per queue entry: Queued, Running, Success, Failed;
    the number of workers, active + idle)."""
    statuses: dict[str, list[str]] = {}
    workers = 0
    for line in text.splitlines():
        match = re.search(r"Worker status:\s*(\d+) active,\s*(\d+) idle", line)
        if match:
            workers = int(match.group(1)) + int(match.group(2))
            continue
        parts = line.split()
        if len(parts) >= 3 and parts[0] != "Task":
            statuses.setdefault(parts[1], []).append(parts[-1])
    return statuses, workers


def queue_status() -> tuple[dict[str, list[str]], int]:
    return parse_queue_status(_cmd(["dvc", "queue", "status"]).stdout)


# ---------------------------------------------------------------- statistics


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample sd (n - 1; None for one value), min, max."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def _numbers(values: dict[str, Any], keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {k: values[k] for k, _ in keys if isinstance(values.get(k), int | float)}


def _describe_each(rows: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """`describe` of each key over the rows that have it."""
    return {k: describe([row[k] for row in rows if k in row]) for k, _ in keys}


def run_record(
    run: Planned, experiment: Experiment | None, paths: dict[str, Any], vehicles: Sequence[str], reused: bool
) -> dict[str, Any]:
    """One row of results.json: identity, state, and the numbers read from the experiment's own files."""
    record: dict[str, Any] = {
        "name": experiment.name if experiment else run.name,
        "planned_name": run.name,
        "arch": run.arch,
        "seed": run.seed,
        "data_seed": run.data_seed,
        "variant": run.variant_label,
        "state": experiment.state if experiment else "missing",
        "rev": experiment.rev if experiment else None,
        "reused": reused,
        "error": experiment.error if experiment else "no experiment found (queue entry removed?)",
        "metrics": {},
        "vehicles": {},
        "timing": {},
    }
    if experiment is None or experiment.state != "success":
        return record
    eval_file = f"{paths['eval_reports']}/metrics.json"
    test = experiment.metrics.get(eval_file, {}).get("test")
    if not isinstance(test, dict):
        record["state"] = "failed"
        record["error"] = f"the experiment has no {eval_file} test metrics"
        return record
    record["metrics"] = _numbers(test, METRICS)
    record["vehicles"] = {v: _numbers(test[v], METRICS) for v in vehicles if isinstance(test.get(v), dict)}
    record["timing"] = _numbers(experiment.metrics.get(str(paths.get("train_timing", "")), {}), TIMING)
    record["baselines"] = run_baselines(test)
    record["compute"] = {
        "global_batch_size": int(experiment.params["train.global_batch_size"]),
        "flops_per_segment": segment_flops_of(experiment.params),
    }
    return record


def group_stats(
    records: Sequence[dict[str, Any]],
    vehicles: Sequence[str],
    monotone_baseline: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per (variant, arch): stats of every metric over its successful runs, overall and per vehicle, and the
    budget summary of their eval curves (levels: 20%, 50% and `monotone_baseline`'s route-optimal rate)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["variant"], record["arch"]), []).append(record)
    out = []
    for (variant, arch), members in groups.items():
        ok = [r for r in members if r["state"] == "success"]
        stats = _describe_each([{**r["metrics"], **r["timing"]} for r in ok], [*METRICS, *TIMING])
        per_vehicle = {v: _describe_each([r["vehicles"].get(v, {}) for r in ok], METRICS) for v in vehicles}
        monotone = (monotone_baseline or {}).get(M.ROUTE_OPTIMAL, {}).get("mean")
        out.append(
            {
                "variant": variant,
                "arch": arch,
                "n": len(ok),
                "budget": group_budget([r["curve"] for r in ok if r.get("curve")], monotone),
                "failed": [r["name"] for r in members if r["state"] != "success"],
                "experiments": [{"name": r["name"], "rev": r["rev"]} for r in ok],
                "stats": stats,
                "vehicles": per_vehicle,
            }
        )
    return out


def git_reader(rev: str) -> Callable[[str], str | None]:
    """A file of the experiment's commit (dvclive TSVs are cache: false, so they are in git), or None."""

    def read(path: str) -> str | None:
        result = _cmd(["git", "show", f"{rev}:{path}"], check=False)
        return result.stdout if result.returncode == 0 else None

    return read


# ---------------------------------------------------------------- outputs


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key in RATES:
        return f"{100 * value:.1f}%"
    return f"{value:.0f}" if key == "wall_s" else f"{value:.2f}"


def _mean_sd(stat: dict[str, Any], key: str, spread: bool = False) -> str:
    """mean ± sd, and with `spread` [min, max] where there is more than one value."""
    if not stat["n"]:
        return "-"
    text = _fmt(stat["mean"], key)
    if stat["sd"] is not None:
        text += " ± " + _fmt(stat["sd"], key).rstrip("%") + ("%" if key in RATES else "")
    if spread and stat["n"] > 1:
        text += f" [{_fmt(stat['min'], key)}, {_fmt(stat['max'], key)}]"
    return text


def _compute(point: dict[str, Any] | None) -> str:
    """A point of a budget curve as its step and compute."""
    if point is None:
        return "not reached"
    samples = "-" if point["samples"] is None else f"{point['samples']:,.0f}"
    return f"step {point['step']:,.0f}: {samples} samples, {point['segments']:,.0f} segments, {point['flops']:.2e} FLOPs"


def budget_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    groups = [g for g in results["groups"] if g.get("budget", {}).get("last")]
    levels = list(groups[0]["budget"]["reach"]) if groups else []
    header = ["variant", "arch", "n", "evals", "end of the runs", "route optimal at the end"]
    header += [f"first >= {name}" for name in levels]
    rows = []
    for group in groups:
        budget = group["budget"]
        last = budget["last"]
        sd = last.get(f"{M.ROUTE_OPTIMAL}_sd")
        end_rate = _fmt(last[M.ROUTE_OPTIMAL], M.ROUTE_OPTIMAL)
        end_rate += "" if sd is None else f" ± {100 * sd:.1f}%"
        cells = [group["variant"], group["arch"], str(group["n"]), str(len(budget["curve"])), _compute(last)]
        cells.append(end_rate)
        for name in levels:
            reach = budget["reach"][name]
            seeds = ", ".join("-" if p is None else f"{p['step']:,}" for p in reach["seeds"])
            cells.append(f"{_compute(reach['mean'])} (mean curve; per seed step: {seeds})")
        rows.append(cells)
    return header, rows


def report_blocks(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report as blocks, ("h1"|"h2"|"p", text) or ("table", (header, rows)): results.md and index.html are
    two renderings of this one list."""
    keys, route = [*METRICS, *TIMING], M.ROUTE_OPTIMAL
    seeds = (
        f"{results['seeds']} seed(s) per arch{' (data seeds varied too)' if results['data_seeds'] else ''}"
    )
    blocks: list[tuple[str, Any]] = [
        ("h1", f"hrm compare: {results['name']}"),
        ("p", f"Command: `{results['command']}`"),
        ("p", f"Baseline commit: `{results['baseline']}`; profile `{results['profile']}`; {seeds}."),
    ]
    machine = results.get("machine")
    if machine:
        text = (
            f"Machine (collected here; DVC's local queue ran the runs here): CPU {machine['cpu']}, torch "
            f"{machine['torch']} CPU kernels `{machine['cpu_capability']}`, {machine['cores']} cores."
        )
        blocks.append(("p", text))
    blocks.append(("p", "Test split, mean ± sd over seeds (sample sd), [min, max]:"))
    rows = [
        [g["variant"], g["arch"], str(g["n"]), str(len(g["failed"]))]
        + [_mean_sd(g["stats"][key], key, spread=True) for key, _ in keys]
        for g in results["groups"]
    ]
    blocks.append(("table", (["variant", "arch", "n", "failed", *(label for _, label in keys)], rows)))
    if results["vehicles"]:
        blocks.append(("p", "Per vehicle, test route optimal (mean ± sd):"))
        rows = [
            [g["variant"], g["arch"]]
            + [_mean_sd(g["vehicles"][v][route], route) for v in results["vehicles"]]
            for g in results["groups"]
        ]
        blocks.append(("table", (["variant", "arch", *results["vehicles"]], rows)))
    lines = results.get("baselines") or {}
    if lines:
        text = "; ".join(
            f"{entry['label']} {_fmt(entry[route]['mean'], route)}"
            + (f" (token acc. {_fmt(entry[M.TOKEN]['mean'], M.TOKEN)})" if M.TOKEN in entry else "")
            for entry in lines.values()
            if route in entry
        )
        blocks.append(("p", f"Baselines, test route optimal (the runs' own evaluate metrics): {text}."))
    header, rows = budget_table(results)
    if rows:
        formula = results["groups"][0]["budget"]["formula"]
        blocks.append(("h2", "Budget: test route optimal against training compute (the train stage's evals)"))
        blocks.append(("table", (header, rows)))
        blocks.append(("p", f"FLOPs per row-segment (hrm/models/flops.py): {formula}."))
    blocks.append(("p", "Experiments (`dvc exp show`, `dvc metrics diff HEAD <name>`):"))
    rows = []
    for run in results["runs"]:
        data_seed = "-" if run["data_seed"] is None else str(run["data_seed"])
        cells = [run["name"], (run["rev"] or "")[:10], run["arch"], str(run["seed"]), data_seed, run["state"]]
        optimal = _fmt(run["metrics"].get(route), route)
        rows.append([*cells, "yes" if run["reused"] else "no", optimal, run["error"] or ""])
    header = ["name", "rev", "arch", "seed", "data seed", "state", "reused", "route optimal", "error"]
    blocks.append(("table", (header, rows)))
    return blocks


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for kind, content in report_blocks(results):
        if kind == "table":
            header, rows = content
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        else:
            lines.append({"h1": "# ", "h2": "## ", "p": ""}[kind] + content)
        lines.append("")
    return "\n".join(lines)


def plot_bars(results: dict[str, Any], path: Path) -> None:
    """Mean test rates per arch with sd error bars, seeds as dots."""
    from hrm.evaluation.plots import new_figure, save_figure

    groups = results["groups"]
    keys = [k for k, _ in METRICS if k in RATES]
    plt, fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    for g, group in enumerate(groups):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(keys))]
        means = [group["stats"][k]["mean"] or 0.0 for k in keys]
        sds = [group["stats"][k]["sd"] or 0.0 for k in keys]
        label = group["arch"] if group["variant"] == "(profile)" else f"{group['arch']} {group['variant']}"
        ax.bar(xs, means, width, yerr=sds, capsize=3, label=f"{label} (n={group['n']})")
        members = [
            r["metrics"]
            for r in results["runs"]
            if r["state"] == "success" and (r["arch"], r["variant"]) == (group["arch"], group["variant"])
        ]
        for x, key in zip(xs, keys, strict=True):
            values = [m[key] for m in members if key in m]
            ax.plot([x] * len(values), values, "k.", markersize=3)
    ax.set_xticks(range(len(keys)), [dict(METRICS)[k] for k in keys])
    ax.set_ylabel("test rate (mean ± sd)")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:  # an all-failed comparison draws nothing to label
        ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def render_html(results: dict[str, Any], figures: dict[str, Path]) -> str:
    """One self-contained page of the same blocks as results.md, figures inlined as base64."""
    from hrm.evaluation.report import STYLE, image, table

    body = []
    for kind, content in report_blocks(results):
        if kind == "table":
            header, rows = content
            body.append(table(header, [([html.escape(c) for c in row], False) for row in rows]))
        else:
            text = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(content))
            body.append(f"<{kind}>{text}</{kind}>")
    captions = {
        "bars": "Test rates per arch, mean ± sd (dots: seeds)",
        "budget": "Budget curves: test metrics against compute, band = mean ± sd over seeds, baselines dashed",
    }
    body += [f"<h2>{html.escape(c)}</h2>" + image(figures[k], c) for k, c in captions.items() if k in figures]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>hrm compare</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    """The report folder, replaced whole. It ignores itself in git (a `.gitignore` of `*`): a report under any
    `--out` must not make the workspace dirty, or the next `hrm compare` would refuse to queue. A folder holding
    files compare did not write is refused, not replaced (hrm.io.staged_directory)."""
    with staged_directory(out_dir, manifest=True, owned=("budget.png",)) as staging:  # budget: not always
        atomic_write_text(staging / ".gitignore", "# written by hrm compare: a report, not source\n*\n")
        figures = {"bars": staging / "bars.png"}
        plot_bars(results, figures["bars"])
        if plot_budget(results, staging / "budget.png"):
            figures["budget"] = staging / "budget.png"
        atomic_write_json(staging / "results.json", results, indent=1)
        atomic_write_text(staging / "results.md", markdown(results))
        atomic_write_text(staging / "index.html", render_html(results, figures))


# ---------------------------------------------------------------- the command


def machine() -> dict[str, Any]:
    """The CPU the comparison ran on: float kernels differ between CPUs, so a run's digits belong to its CPU."""
    import os
    import platform

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


def vehicle_names(params: dict[str, Any]) -> list[str]:
    """generate.vehicles' names, in params order (the per-vehicle columns)."""
    return [v["name"] for v in params.get("generate", {}).get("vehicles", []) if isinstance(v, dict)]


def collect(
    runs: Sequence[Planned],
    found: dict[str, list[Experiment]],
    params: dict[str, Any],
    reused: set[str],
    curves: bool = True,
) -> list[dict[str, Any]]:
    """One record per run (`run_record`), with its eval curve; a finished experiment whose params are not the
    plan's counts as failed."""
    paths, vehicles = params.get("paths", {}), vehicle_names(params)
    records = []
    for run in runs:
        experiment = (found.get(run.name) or [None])[0]
        if experiment is not None and experiment.state == "success":
            differ = params_differ(params, run, experiment)
            if differ:
                error = f"params differ from the plan: {', '.join(differ[:5])}"
                experiment = dataclasses.replace(experiment, state="failed", metrics={}, error=error)
        record = run_record(run, experiment, paths, vehicles, reused=run.name in reused)
        record["curve"] = []
        if curves and record["state"] == "success":
            record["curve"] = run_curve(git_reader(record["rev"]), paths["train_log"], **record["compute"])
        records.append(record)
    return records


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
    params = load_params(params_path) if rev is None else params_at(rev)
    runs = plan(
        params, profile=profile, archs=archs, seeds=seeds, data_seeds=data_seeds, sets=sets, name=name
    )
    out_dir = Path(out_dir)
    baseline = check_repository(out_dir) if rev is None else resolve_rev(rev)
    found = show_experiments(baseline)

    # Reuse a finished experiment of this name (its params must be the plan's: a clash is an error before
    # anything is queued); wait for queued/running ones; queue the rest (missing or failed).
    to_queue, reused, waiting = [], set(), []
    for run in runs:
        current = (found.get(run.name) or [None])[0]
        if current is not None and current.state in ("queued", "running"):
            waiting.append(run)
        elif current is not None and current.state == "success":
            differ = params_differ(params, run, current)
            if differ:
                raise UserError(
                    f"experiment {run.name} exists with other params ({', '.join(differ[:5])}): choose another "
                    f"--name or remove it (dvc exp remove {run.name})"
                )
            reused.add(run.name)
        elif rev is None and (current is None or current.state == "failed"):
            to_queue.append(run)
    if rev is None:
        print(
            f"{len(runs)} runs: {len(reused)} finished (reused), {len(waiting)} already queued or running, "
            f"{len(to_queue)} to queue",
            flush=True,
        )
    else:
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
    started = time.perf_counter()
    run_queue(to_queue, {run.name for run in runs}, jobs, poll_s)
    if len(reused) < len(runs):  # something ran since the first look
        found = show_experiments(baseline)
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


def run_queue(to_queue: Sequence[Planned], names: set[str], jobs: int, poll_s: float) -> None:
    """Queue `to_queue`, start workers if none is, wait until none of `names` is queued or running. Progress
    counts this call's queue entries only: entries of these names that had finished before it (an earlier
    call's failures, another commit's runs of the same name) are left out."""
    try:
        earlier = finished_entries(queue_status()[0], names)
        for run in to_queue:
            command = ["dvc", "exp", "run", "--queue", "-n", run.name, *set_param_args(run.overrides)]
            result = _cmd(command, check=False)
            if result.returncode != 0:
                tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
                raise UserError(
                    f"dvc refused to queue {run.name} ({shlex.join(command)}):\n{tail}\nIf it names uncommitted or untracked files: commit "
                    "them (git add -A && git commit) or stash them (git stash -u) and run the same command again."
                )
            print(f"queued {run.name}", flush=True)
        statuses, workers = queue_status()
        if any(s in ("Queued", "Running") for n, ss in statuses.items() if n in names for s in ss):
            # `dvc queue start --jobs N` tops up to N workers, counting them as `dvc queue status` does: a busy
            # worker may not answer, so while any entry runs the count is not trusted (two comparisons at once
            # would otherwise start a second set of workers and run 2N runs on N cores); `wait_for` restarts
            # workers if none turns out to be alive.
            if workers < jobs and not any("Running" in ss for ss in statuses.values()):
                start_workers(jobs)
                print(f"dvc queue start --jobs {jobs}", flush=True)
            wait_for(names, poll_s, jobs, earlier=earlier)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: queued experiments stay in DVC's queue and running ones keep running "
            "(`dvc queue status`; stop them with `dvc queue kill <name>`). Run the same hrm compare again to "
            "wait for them and collect; finished ones are reused.",
            file=sys.stderr,
            flush=True,
        )
        raise


def finished_entries(statuses: dict[str, list[str]], names: set[str]) -> Counter[tuple[str, str]]:
    """(name, status) of the finished queue entries of `names`: a finished entry never changes, so what a later
    `dvc queue status` lists beyond these is the work of this call (or one it waits for)."""
    return Counter(
        (n, s) for n, ss in statuses.items() if n in names for s in ss if s not in ("Queued", "Running")
    )


def wait_for(
    names: set[str],
    poll_s: float,
    jobs: int,
    idle_restart_s: float = 60.0,
    earlier: Counter[tuple[str, str]] | None = None,
) -> None:
    """Until none of `names` is Queued or Running in DVC's queue; prints progress when it changes.

    `dvc queue status` counts workers by asking them, and a busy worker may not answer: a worker count of 0 is
    trusted only while nothing runs and entries stay queued for `idle_restart_s`; then workers are started
    again (a `dvc queue stop` or a crashed worker) instead of waiting forever."""
    last = None
    idle_since: float | None = None
    while True:
        statuses, workers = queue_status()
        entries = Counter((n, s) for n, ss in statuses.items() if n in names for s in ss) - (
            earlier or Counter()
        )
        counts = Counter(s for (_, s), k in entries.items() for _ in range(k))
        summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
        if summary != last:
            print(f"[{time.strftime('%H:%M:%S')}] queue: {summary}", flush=True)
            last = summary
        if counts["Queued"] + counts["Running"] == 0:
            return
        if workers == 0 and counts["Running"] == 0:
            idle_since = idle_since if idle_since is not None else time.monotonic()
            if time.monotonic() - idle_since >= idle_restart_s:
                print("no DVC queue worker is running: starting them again", flush=True)
                start_workers(jobs)
                idle_since = None
        else:
            idle_since = None
        time.sleep(poll_s)
