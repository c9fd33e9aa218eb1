"""The first GPU call rehearsed on the CPU: the device's Python and packages, the checkout as the device tool
sends it, the carried wheels installed and the device command run exactly as docs/gpu_check.md gives it.

    PYTHONPATH=$PWD python bench/device_rehearsal.py                  # first run: ~GBs of downloads
    PYTHONPATH=$PWD python bench/device_rehearsal.py --rebuild-wheels # probe and download the wheels again

Why: a GPU call costs minutes of a 15-minute loan, and the things that break a first call are not the GPU:
a carried wheel missing (the device installs them with `--no-deps`, so nothing says so until an import
fails), a carried wheel that wants another version of a package the image holds, Python 3.12 instead of the
3.11 here, the image's numpy 2.5. Steps (each failure exits non-zero saying which):
1. a Python 3.12 venv under `--scratch` (kept between runs, remade when its requirements change) with
   torch==2.11.0 from PyPI (a CUDA build; it runs on the CPU here) and the image's packages that `hrm`,
   `bench` and `stages` import, plus those the carried wheels require, at the versions the device's pip list
   gives (DEVICE_VERSIONS) and PyPI's newest otherwise (a lead: the image's versions of those are unknown);
2. the carried wheels (bench/device_wheels.py; built if `--wheels` holds none) and the checkout as the
   device gets it (device_wheels.device_copy: git ls-files, no .git), under the tool's 64 MiB;
3. `device_wheels.device_command` with the site folder under `--scratch` and `--smoke`, run by bash in the
   copy with the venv's python3 first on PATH, $OUT under `--scratch` and a stub nvidia-smi; pip's
   configuration of this machine is hidden (the device has none);
4. before the smoke run is trusted: every carried wheel's requirements against what is installed (pip check
   over the venv + the site folder, since `--no-deps` skipped it), and no carried wheel shadowing an image
   package; then the command's own exit code and `gpu_check.json`'s errors.
Not in the default tests (it downloads GBs and takes minutes); measured figures are in docs/gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_wheels import (  # noqa: E402  (bench/ is not a package)
    DEVICE_PACKAGES,
    REPO,
    WHEEL_DIR,
    device_command,
    device_copy,
    normalized,
)

PYTHON = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")
# Versions read off the device's pip list (/work/.library/device/KINDS.md, "pip list", 2026-11).
DEVICE_VERSIONS = {"torch": "2.11.0", "numpy": "2.5.2", "triton": "3.6.0"}
# Image packages that hrm/, bench/ and stages/ import (grep of their import lines), by distribution name.
IMAGE_PACKAGES_USED = ("typer", "pyyaml", "matplotlib", "tqdm", "scipy", "rich", "psutil", "pandas")
CARRY_LIMIT_BYTES = 64 * 2**20  # the device tool's working tree + carried paths
NVIDIA_SMI_STUB = (
    "#!/bin/sh\necho 'name, memory.total [MiB], driver_version'\necho 'rehearsal (no GPU), 0, none'\n"
)


class RehearsalError(SystemExit):
    """A step failed: the message says which and why (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"device rehearsal FAILED: {message}")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def wheel_distributions(folder: Path) -> dict[str, str]:
    """{normalized distribution: version} of the wheels in `folder` (name-version-tags.whl)."""
    return {normalized(w.name.split("-")[0]): w.name.split("-")[1] for w in sorted(folder.glob("*.whl"))}


def wheel_requirements(folder: Path) -> set[str]:
    """Normalized names of every requirement the wheels declare (markers and extras ignored: a superset)."""
    import re
    import zipfile

    names = set()
    for wheel in folder.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            for line in archive.read(metadata).decode("utf-8").splitlines():
                if line.startswith("Requires-Dist:") and "extra ==" not in line:
                    names.add(normalized(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0]))
    return names


def venv_requirements(wheels: Path) -> list[str]:
    """torch and the image packages the project imports or the carried wheels require, pinned where known."""
    device = {normalized(name) for name in DEVICE_PACKAGES}
    wanted = {"torch", "numpy", "triton", *IMAGE_PACKAGES_USED} | (wheel_requirements(wheels) & device)
    return sorted(f"{n}=={DEVICE_VERSIONS[n]}" if n in DEVICE_VERSIONS else n for n in wanted)


def make_venv(venv: Path, requirements: list[str]) -> Path:
    """The Python 3.12 venv with `requirements`; reused when its recorded requirements are the same."""
    stamp = venv / "rehearsal-requirements.txt"
    python = venv / "bin" / "python3"
    if stamp.is_file() and stamp.read_text(encoding="utf-8").split() == requirements:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    if not PYTHON.is_file():
        raise RehearsalError(f"no Python 3.12 at {PYTHON} (the device's python3 is 3.12)")
    done = run([str(PYTHON), "-m", "venv", str(venv)])
    if done.returncode != 0:
        raise RehearsalError(f"python3.12 -m venv {venv}: {done.stderr[-1000:]}")
    downloads = venv.parent / "downloads"  # kept: pip download skips the files already there
    print(f"venv: {len(requirements)} requirements into {downloads} (torch's CUDA build is GBs)", flush=True)
    for pip in (
        ["download", "-q", "-d", str(downloads)],
        ["install", "-q", "--no-index", "-f", str(downloads)],
    ):
        done = run([str(python), "-m", "pip", *pip, *requirements])
        if done.returncode != 0:
            raise RehearsalError(f"pip {pip[0]} for the venv: {done.stderr[-2000:]}")
    stamp.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    return python


def installed(python: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """{normalized distribution: version} that `python` sees (with `env`'s PYTHONPATH, if any)."""
    done = run([str(python), "-m", "pip", "list", "--format=json"], env=env)
    if done.returncode != 0:
        raise RehearsalError(f"pip list: {done.stderr[-1000:]}")
    return {normalized(d["name"]): d["version"] for d in json.loads(done.stdout)}


def clashes(
    pip_check_output: str, carried: dict[str, str], image: dict[str, str]
) -> tuple[list[str], list[str]]:
    """(problems, notes) of the carried wheels. Problems: pip check's "has requirement X, but you have X v"
    lines about them (a carried wheel wanting another version of what is installed), and a carried wheel
    that shadows a package of the device's list (PYTHONPATH comes before the image's site-packages). Notes:
    their declared requirements that nothing installs ("which is not installed"): device_wheels carries the
    import closure the probe saw, not every declared requirement, and the smoke run shows whether one is
    imported after all. pip check's lines about the image's own packages are not ours and are left out."""
    ours = [
        line.strip()
        for line in pip_check_output.splitlines()
        if line.split() and normalized(line.split()[0]) in carried
    ]
    device = {normalized(name) for name in DEVICE_PACKAGES}
    problems = [line for line in ours if "which is not installed" not in line]
    problems += [
        f"carried {name} {version} shadows the image's {name} {image[name]}"
        for name, version in carried.items()
        if name in image and name in device
    ]
    return problems, [line for line in ours if "which is not installed" in line]


def missing_modules(log: str) -> list[str]:
    """The modules a run could not import ("No module named 'x'"): a wheel that should have been carried."""
    import re

    return sorted(set(re.findall(r"No module named '([\w.]+)'", log)))


def smoke_errors(report_path: Path) -> dict[str, str]:
    """gpu_check.json's errors, or why there is no report."""
    if not report_path.is_file():
        return {"gpu_check.json": "not written"}
    return json.loads(report_path.read_text(encoding="utf-8")).get("errors", {})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/hrm-device-rehearsal"))
    parser.add_argument(
        "--wheels", type=Path, default=WHEEL_DIR, help="the carried wheels (device_wheels.py)"
    )
    parser.add_argument("--rebuild-wheels", action="store_true", help="run device_wheels.py even if present")
    args = parser.parse_args()
    started = time.perf_counter()
    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)

    if args.rebuild_wheels or not any(args.wheels.glob("*.whl")):
        print(f"wheels: none in {args.wheels}: bench/device_wheels.py (probe + download)", flush=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = run(
            [sys.executable, str(REPO / "bench" / "device_wheels.py"), "--dir", str(args.wheels)], env=env
        )
        if done.returncode != 0:
            raise RehearsalError(f"bench/device_wheels.py: {done.stdout[-1000:]}{done.stderr[-1500:]}")
    carried = wheel_distributions(args.wheels)
    python = make_venv(scratch / "venv", venv_requirements(args.wheels))
    image = installed(python)
    device = {normalized(name) for name in DEVICE_PACKAGES}
    extra = sorted(set(image) - device - {"pip"})
    print(
        f"venv: Python 3.12, {len(image)} distributions, torch {image.get('torch')}; not on the device's list "
        f"(pulled in by PyPI's newest versions here; the device may lack them): {', '.join(extra) or 'none'}",
        flush=True,
    )

    checkout, site, out = scratch / "checkout", scratch / "site", scratch / "out"
    for folder in (checkout, site, out):
        shutil.rmtree(folder, ignore_errors=True)
    checkout.mkdir()
    out.mkdir()
    device_copy(checkout)
    shutil.copytree(args.wheels, checkout / ".device-wheels")
    size = sum(f.stat().st_size for f in checkout.rglob("*") if f.is_file())
    if size > CARRY_LIMIT_BYTES:
        raise RehearsalError(
            f"the checkout and wheels are {size / 2**20:.1f} MiB: the device tool carries 64"
        )
    tools = scratch / "bin"
    tools.mkdir(exist_ok=True)
    (tools / "nvidia-smi").write_text(NVIDIA_SMI_STUB, encoding="utf-8")
    (tools / "nvidia-smi").chmod(0o755)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=os.pathsep.join([str(python.parent), str(tools), env.get("PATH", "")]),
        OUT=str(out),
        PIP_CONFIG_FILE=os.devnull,  # this machine's pip settings (find-links, constraints) are not the device's
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    command = device_command(".device-wheels", site=str(site), check_args="--smoke")
    install = command.split(" || exit 3;")[0] + " || exit 3"  # the command's own install, first on its own
    done = run(["bash", "-c", install], cwd=checkout, env=env)
    if done.returncode != 0:
        raise RehearsalError(f"the device command's pip install: {done.stderr[-1500:]}")
    check = run([str(python), "-m", "pip", "check"], env=dict(env, PYTHONPATH=str(site)))
    problems, undeclared = clashes(check.stdout, carried, image)
    if problems:
        raise RehearsalError("the carried wheels do not fit the image:\n  " + "\n  ".join(problems))
    unmet = sorted({line.split()[3].rstrip(",") for line in undeclared})
    print(
        f"wheels: {len(carried)} carried, no version clash, none shadows the image's list; checkout "
        f"{size / 2**20:.1f} MiB; declared requirements carried by nothing (never imported by the probe; "
        f"the smoke run checks): {', '.join(unmet) or 'none'}",
        flush=True,
    )

    print(f"device command (--smoke):\n{command}", flush=True)
    smoke_started = time.perf_counter()
    done = run(["bash", "-c", command], cwd=checkout, env=env)
    smoke_s = time.perf_counter() - smoke_started
    errors = smoke_errors(out / "gpu_check.json")
    if done.returncode != 0 or errors:
        log = (
            (out / "gpu_check.log").read_text(encoding="utf-8")[-3000:]
            if (out / "gpu_check.log").is_file()
            else ""
        )
        parts = "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in errors.items())
        missing = missing_modules(log + done.stderr + json.dumps(errors))
        which = f"; modules missing (carry their wheels): {', '.join(missing)}" if missing else ""
        raise RehearsalError(
            f"the device command exited {done.returncode} ({parts}){which}\n{log}{done.stderr[-1500:]}"
        )
    print(
        f"device rehearsal PASSED: smoke run {smoke_s:.0f} s, total {time.perf_counter() - started:.0f} s "
        f"({len(carried)} wheels, torch {image.get('torch')}, numpy {image.get('numpy')}); report {out / 'gpu_check.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
