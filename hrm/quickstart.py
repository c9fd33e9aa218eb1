"""`hrm quickstart`: a params.yaml profile (with its `per_arch` part for the chosen arch) end to end as one DVC
experiment, run in a git worktree of HEAD under `.dvc/tmp/quickstart/<name>` so that the workspace keeps the
paper params and outputs, and so that Ctrl-C then the same command resumes from the trainer's last checkpoint
(the worktree and its `persist: true` checkpoints stay until the run succeeds). It ends with a verdict: the
result beside the range measured for these settings (`docs/results/quick-spread.json`, bench/quick_spread.py)
and beside the no-model baselines, and the commands to run next."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hrm.config import chosen_arch, load_params, parse_override, profile_overrides, run_params
from hrm.evaluation.metrics import ROUTE_OPTIMAL, ROUTE_VALID, TOKEN
from hrm.evaluation.runner import HEADLINE_FILE
from hrm.io import UserError, staged_directory
from hrm.rules import check_rules

# The runs that give the expected range, measured by bench/quick_spread.py (committed with docs/results.md).
REFERENCE = Path("docs/results/quick-spread.json")
RUNS = Path(".dvc/tmp/quickstart")  # git- and DVC-ignored (.dvc/.gitignore)
ARCH_TITLES = {"hrm_v1": "HRM", "trm": "TRM", "transformer": "the same-size transformer"}


def flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat


def set_param_args(overrides: dict[str, Any]) -> list[str]:
    """`dvc exp run -S key=value` arguments; values in JSON, which DVC parses as YAML."""
    return [f"-S{key}={json.dumps(value)}" for key, value in flatten(overrides).items()]


def settings_fingerprint(params: dict[str, Any]) -> str:
    """What makes two runs the same experiment up to the seed: every setting but the seed, the output paths and
    the profiles (which no stage reads). The reference runs and a quickstart are compared on it."""
    kept = {k: v for k, v in params.items() if k not in ("paths", "profiles")}
    kept["train"] = {k: v for k, v in kept.get("train", {}).items() if k != "seed"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def _check_checkout(root: Path) -> str:
    """HEAD's commit; a UserError when there is none or the workspace differs from it (the run is HEAD's)."""
    head = _git("rev-parse", "HEAD", cwd=root)
    if head.returncode != 0:
        raise UserError("quickstart needs a git checkout with at least one commit (a clone of this repo)")
    changed = [line[3:] for line in _git("status", "--porcelain", cwd=root).stdout.splitlines() if line]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise UserError(
            f"quickstart runs the committed code and params (the experiment is filed under commit "
            f"{head.stdout.strip()[:7]}), but the workspace has uncommitted changes: {shown}. "
            "Commit them (git add -A && git commit) or stash them (git stash -u), then run it again"
        )
    return head.stdout.strip()


def _worktree(root: Path, name: str, head: str) -> tuple[Path, bool]:
    """The run's git worktree of HEAD (sharing the workspace's DVC cache); whether an earlier run is resumed."""
    folder = root / RUNS / name
    if folder.exists():
        if _git("rev-parse", "HEAD", cwd=folder).stdout.strip() == head:
            return folder, True
        _remove_worktree(root, folder)  # an earlier commit's run: its checkpoints belong to other code
    folder.parent.mkdir(parents=True, exist_ok=True)
    added = _git("worktree", "add", "--detach", "--quiet", str(folder), head, cwd=root)
    if added.returncode != 0:
        raise UserError(f"git worktree add {folder} failed: {added.stderr.strip()}")
    cache = subprocess.run(["dvc", "cache", "dir"], cwd=root, capture_output=True, text=True, check=False)
    if cache.returncode == 0 and cache.stdout.strip():
        local = folder / ".dvc" / "config.local"
        local.write_text(f"[cache]\n    dir = {Path(cache.stdout.strip()).resolve()}\n", encoding="utf-8")
    return folder, False


def _remove_worktree(root: Path, folder: Path) -> None:
    _git("worktree", "remove", "--force", str(folder), cwd=root)
    shutil.rmtree(folder, ignore_errors=True)
    _git("worktree", "prune", cwd=root)


def _run_experiment(command: list[str], folder: Path) -> None:
    """Run DVC in the worktree. Ctrl-C reaches DVC and the trainer too: the trainer writes a checkpoint and
    exits, so we wait for them (a second Ctrl-C stops at once) and say how to resume."""
    print(f"+ cd {shlex.quote(str(folder))} && {shlex.join(command)}", flush=True)
    process = subprocess.Popen(command, cwd=folder)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        try:
            process.wait()
        except KeyboardInterrupt:
            process.kill()
        print(
            f"\ninterrupted: the run and its checkpoints are kept in {folder}; "
            "the same command resumes from the last checkpoint",
            flush=True,
        )
        raise
    if code != 0:
        raise UserError(
            f"the experiment failed (exit {code}; its output is above). The same command resumes it "
            f"from {folder}"
        )


def quickstart(
    params_path: str | Path = "params.yaml",
    profile: str = "quick",
    extra: tuple[str, ...] = (),
    name: str | None = None,
) -> Path:
    """Run `profile` plus `extra` overrides as experiment `name` (default: the profile's); its report folder."""
    params = load_params(params_path)
    # per-arch overrides follow --set arch.name=...
    arch = chosen_arch(params, profile, extra)
    overrides = profile_overrides(params, profile, arch, params_path)
    # checked here, schema and rules between keys: a typo or an impossible run stops before DVC starts a stage
    settings = run_params(params, profile, extra, params_path)
    check_rules(settings, params_path)
    name = name or profile
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise UserError(f"--name {name!r}: use letters, digits, '-' and '_' (it names a git ref)")
    if shutil.which("dvc") is None:
        raise UserError("dvc is not on PATH: install the project first (see README)")
    root = Path.cwd()
    head = _check_checkout(root)

    started = time.perf_counter()
    folder, resumed = _worktree(root, name, head)
    if resumed:
        print(f"resuming the run in {folder} (from its last checkpoint)", flush=True)
    # each --set value as JSON, as it was checked (DVC reads -S values as YAML 1.2: `yes` would stay text)
    set_args = set_param_args(overrides) + set_param_args(dict(parse_override(item) for item in extra))
    _run_experiment(["dvc", "exp", "run", "--force", "-n", name, *set_args], folder)

    eval_reports = Path(settings["paths"]["eval_reports"])
    target = root / "reports" / "experiments" / name
    with staged_directory(target) as staging:
        shutil.copytree(folder / eval_reports, staging, dirs_exist_ok=True)
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    weights = folder / settings["paths"]["model"]
    weights_sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else ""
    _remove_worktree(root, folder)
    elapsed = time.perf_counter() - started

    print(f"\n{profile} profile finished in {elapsed / 60:.1f} min; report: {target / 'index.html'}")
    reference = _reference(root)
    for line in verdict(metrics["test"], settings, arch, reference, weights_sha):
        print(line)
    print("next:")
    for command, why in next_commands(profile, name, arch, eval_reports, extra):
        print(f"  {command}    # {why}")
    return target


def _reference(root: Path) -> dict[str, Any] | None:
    path = root / REFERENCE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def verdict(
    test: dict[str, Any],
    settings: dict[str, Any],
    arch: str,
    reference: dict[str, Any] | None,
    weights_sha: str = "",
) -> list[str]:
    """The result in words: beside the reference runs of the same settings (when they exist) and the baselines."""
    title = ARCH_TITLES.get(arch, arch)
    optimal = test[ROUTE_OPTIMAL]
    lines = [
        f"result: {title} ({arch}) test route optimal {_pct(optimal)} (route valid {_pct(test[ROUTE_VALID])}, "
        f"token accuracy {_pct(test[TOKEN])})"
    ]
    runs: list[dict[str, Any]] = []
    expected = None
    if reference and reference.get("settings", {}).get(arch) == settings_fingerprint(settings):
        runs = [r for r in reference.get("runs", []) if r["arch"] == arch]
        expected = reference.get("expected", {}).get(arch)
    if expected:
        low, high = expected["min"], expected["max"]
        where = "inside" if low <= optimal <= high else "OUTSIDE"
        lines.append(
            f"  expected {_pct(low)} to {_pct(high)} (reference runs, seeds from 0: {'; '.join(expected['sources'])}; "
            f"docs/results.md): {where} the expected range"
        )
        seed = settings["train"]["seed"]
        same = [r for r in runs if weights_sha and r.get("weights_sha256") == weights_sha]
        if same:
            lines.append(
                f"  bit-identical to the reference run of seed {seed} under kernel set '{same[0]['kernels']}' "
                f"on {reference.get('machine', {}).get('cpu', 'its CPU')}"
            )
        else:
            mine = ", ".join(f"{r['kernels']} {_pct(r[ROUTE_OPTIMAL])}" for r in runs if r["seed"] == seed)
            if mine:
                lines.append(
                    f"  not bit-identical to a reference run of seed {seed} ({mine}): this CPU sums in another "
                    "order (another kernel set or CPU), which is another draw of the same experiment"
                )
        if where == "OUTSIDE":
            lines.append("  a result outside every reference run: check `hrm doctor` and docs/results.md")
    else:
        lines.append("  no reference runs for these settings (bench/quick_spread.py measures them)")
    monotone = test.get("monotone_path", {}).get(ROUTE_OPTIMAL)
    copy = test.get("copy_input", {}).get(TOKEN)
    if monotone is not None:
        lines.append(
            f"  baselines (no model): best monotone path {_pct(monotone)} route optimal, copy-the-input "
            f"{_pct(copy)} token accuracy"
        )
        if optimal < monotone:
            lines.append(
                "  below the best-monotone-path baseline: at this budget the model has not learned to route. "
                "This run checks the pipeline end to end, not HRM's claim (that takes the paper data on a GPU: "
                "README, 'One GPU')."
            )
        else:
            lines.append(
                "  at or above the best-monotone-path baseline: the model routes better than no search."
            )
    return lines


def next_commands(
    profile: str, name: str, arch: str, eval_reports: Path, extra: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """Pasteable commands to run next: the same run with the transformer (or HRM), then the two side by side."""
    other = "transformer" if arch != "transformer" else "hrm_v1"
    other_name = f"{name}-{other.replace('_', '-')}"
    headline = (eval_reports / HEADLINE_FILE).as_posix()
    sets = [arg for item in extra if not item.startswith("arch.name=") for arg in ("--set", item)]
    return [
        (
            shlex.join(
                [
                    "hrm",
                    "quickstart",
                    "--profile",
                    profile,
                    *sets,
                    "--set",
                    f"arch.name={other}",
                    "--name",
                    other_name,
                ]
            ),
            f"the same run with {ARCH_TITLES.get(other, other)}",
        ),
        (
            shlex.join(["dvc", "metrics", "diff", name, other_name, "--all", "--targets", headline]),
            "the two side by side",
        ),
        (shlex.join(["dvc", "exp", "show", "--only-changed"]), "every experiment, route metrics first"),
    ]
