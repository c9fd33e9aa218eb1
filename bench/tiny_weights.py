"""Fingerprints of the tiny profile's training, for refactors that must not change numerics: generate and
convert the tiny data once, then train and evaluate every architecture with each loss (1 thread), through the
stage scripts. Prints (and with --json writes) sha256 of each run's model file, its dvclive folder (the trainer's
evals) and evaluate's metrics.json; two commits give the same table exactly when training and evaluation are
bit-identical on this CPU.

    PYTHONPATH=$PWD python bench/tiny_weights.py --out /tmp/tiny-weights [--json before.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # _common, also when loaded by path (tests)

from _common import run_paths  # noqa: E402

from hrm.config import load_params, run_params  # noqa: E402

ARCHS = ("hrm_v1", "trm", "transformer")
LOSSES = ("softmax_cross_entropy", "stablemax_cross_entropy")


def stage(name: str, params_file: Path, log: Path) -> None:
    command = [sys.executable, "-m", f"stages.{name}", "--params", str(params_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("a", encoding="utf-8") as out:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}); see {log}")


def write_params(folder: Path, params: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def sha(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative paths and contents, in sorted order)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in [path, *path.rglob("*")] if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (reused: data is kept)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    base = load_params(REPO / "params.yaml")
    data = args.out / "data"
    paths = {"raw": str(data / "raw"), "hrm": str(data / "hrm"), "data_reports": str(data / "reports")}
    if not (data / "hrm" / "test" / "dataset.json").is_file():
        params = run_params(base, "tiny")
        data_params = write_params(data, {**params, "paths": {**params["paths"], **paths}})
        for name in ("generate", "convert"):
            stage(name, data_params, data / "log.txt")
    table = {}
    for arch in ARCHS:
        for loss in LOSSES:
            folder = args.out / f"{arch}-{loss.split('_')[0]}"
            params = run_params(base, "tiny", [f"arch.name={arch}", f"arch.loss={loss}", "train.threads=1"])
            params["paths"] = run_paths(params["paths"], folder, paths)
            params_file = write_params(folder, params)
            for name in ("train", "evaluate"):
                stage(name, params_file, folder / "log.txt")
            table[folder.name] = row = {
                "model": sha(folder / "model.pt"),
                "train_log": sha(folder / "train"),
                "eval_metrics": sha(folder / "eval" / "metrics.json"),
            }
            print(f"{folder.name:28s} " + "  ".join(f"{key} {value}" for key, value in row.items()))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
