"""What a reader must open to follow one path through the code, counted from the code that runs: the files and
functions of hrm/ and stages/ that Python enters.

    validate: from the stage's start to the moment reports/data/compliance.json is written.
    train:    one training step: the calls from the last step but one's first optimizer update to the last step's,
              plus the stack above that update (stage -> loop -> step -> update). The tiny profile evaluates
              every 2 steps of 4, so this step holds no evaluation.

    PYTHONPATH=$PWD python bench/call_map.py validate --params PARAMS [--list]
    PYTHONPATH=$PWD python bench/call_map.py train --params PARAMS [--list]

Each also prints the path's own figure: train without hrm/models/ (the model's forward), validate without the
modules every stage reads (SHARED below: settings, I/O rules, the data contract, generate's settings).

PARAMS is a full params file whose data paths exist (bench/tiny_weights.py leaves one per run under its --out);
every output path is redirected to a scratch folder, so nothing of the run's is touched.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OWN = (str(REPO / "hrm") + "/", str(REPO / "stages") + "/")
# What every stage reads (settings, I/O rules, the data contract, generate's settings): a path's own files are the rest.
SHARED = (
    "hrm/config.py",
    "hrm/io.py",
    "hrm/data/spec.py",
    "hrm/data/rng.py",
    "hrm/data/routing.py",
    "hrm/data/colours.py",
    "hrm/data/facts.py",
    "hrm/data/generation/",
)
OUTPUTS = ("checkpoints", "model", "train_log", "train_timing", "eval_reports", "data_reports")


class Recorder:
    """sys.setprofile hook: every entry into a function of hrm/ or stages/, in order, and the optimizer updates."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.updates: list[tuple[int, object, list[tuple[str, str]]]] = []
        self.frozen = False
        self._optimizer = None

    def own_stack(self, frame) -> list[tuple[str, str]]:
        stack = []
        while frame is not None:
            if frame.f_code.co_filename.startswith(OWN) and not frame.f_code.co_name.startswith("<"):
                stack.append(_name(frame))
            frame = frame.f_back
        return stack[::-1]

    def __call__(self, frame, event, arg) -> None:
        if self.frozen or event != "call":
            return
        code = frame.f_code
        if code.co_name == "step" and "self" in frame.f_locals:
            if self._optimizer is None:
                import torch

                self._optimizer = torch.optim.Optimizer
            owner = frame.f_locals["self"]
            if isinstance(owner, self._optimizer):
                self.updates.append((len(self.calls), id(owner), self.own_stack(frame)))
        if code.co_filename.startswith(OWN) and not code.co_name.startswith("<"):
            self.calls.append(
                _name(frame)
            )  # functions only: module bodies (imports) and generator expressions are not read as steps


def _name(frame) -> tuple[str, str]:
    path = Path(frame.f_code.co_filename).relative_to(REPO).as_posix()
    return path, frame.f_code.co_qualname


def redirect(params_file: Path, scratch: Path) -> Path:
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    for key in OUTPUTS:
        params["paths"][key] = str(scratch / key / Path(params["paths"][key]).name)
    out = scratch / "params.yaml"
    out.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return out


def run_stage(name: str, params_file: Path, recorder: Recorder) -> None:
    sys.argv = [f"stages/{name}.py", "--params", str(params_file)]
    sys.setprofile(recorder)
    try:
        runpy.run_module(f"stages.{name}", run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    finally:
        sys.setprofile(None)


def validate_path(params_file: Path) -> list[tuple[str, str]]:
    recorder = Recorder()

    def freeze_at_report(event: str, args: tuple) -> None:
        if recorder.frozen:
            return
        target = args[1] if event in ("os.rename", "os.replace") else args[0] if event == "open" else None
        writes = event != "open" or any(flag in str(args[1]) for flag in "wax")
        if isinstance(target, (str, Path)) and str(target).endswith("compliance.json") and writes:
            recorder.frozen = True

    sys.addaudithook(freeze_at_report)
    run_stage("validate", params_file, recorder)
    if not recorder.frozen:
        raise SystemExit("the validate stage never wrote compliance.json")
    return recorder.calls


def train_path(params_file: Path) -> list[tuple[str, str]]:
    recorder = Recorder()
    run_stage("train", params_file, recorder)
    owners = [owner for _, owner, _ in recorder.updates]
    # k optimizers a step (the memory plan's probe steps come first): the smallest k whose last two runs match
    per_step = next(k for k in range(1, len(owners) // 2 + 1) if owners[-k:] == owners[-2 * k : -k])
    last_but_one, last = recorder.updates[-2 * per_step], recorder.updates[-per_step]
    return recorder.calls[last_but_one[0] : last[0]] + last[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=("validate", "train"))
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--list", action="store_true", help="list the functions, file by file")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as scratch:
        params_file = redirect(args.params, Path(scratch))
        calls = validate_path(params_file) if args.path == "validate" else train_path(params_file)
    by_file: dict[str, set[str]] = defaultdict(set)
    for path, function in calls:
        by_file[path].add(function)
    functions = sum(len(names) for names in by_file.values())
    print(f"{args.path}: {len(by_file)} files, {functions} functions")
    # the model's forward is the model file's business; the data contract and settings are every stage's
    skip, what = (("hrm/models/",), "hrm/models/") if args.path == "train" else (SHARED, "the shared modules")
    outside = {path: names for path, names in by_file.items() if not path.startswith(skip)}
    count = sum(len(names) for names in outside.values())
    print(f"{args.path} outside {what}: {len(outside)} files, {count} functions")
    for path in sorted(by_file):
        print(
            f"  {path}: {len(by_file[path])}" + (f"  {', '.join(sorted(by_file[path]))}" if args.list else "")
        )


if __name__ == "__main__":
    main()
