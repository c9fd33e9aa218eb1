"""The DVC and git driver of `hrm compare`: what `dvc exp show` says about the experiments of a commit, the queue
(`dvc exp run --queue`, `dvc queue start/status`), and the files and params.yaml of a commit."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm.compare.plan import Planned, expected_params
from hrm.config import load_params
from hrm.io import UserError
from hrm.quickstart import flatten, set_param_args

STATE_RANK = {"success": 0, "running": 1, "queued": 2, "failed": 3}


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


def git_reader(rev: str) -> Callable[[str], str | None]:
    """A file of the experiment's commit (dvclive TSVs are cache: false, so they are in git), or None."""

    def read(path: str) -> str | None:
        result = _cmd(["git", "show", f"{rev}:{path}"], check=False)
        return result.stdout if result.returncode == 0 else None

    return read


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
