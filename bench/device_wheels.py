"""The wheels bench/gpu_check.py needs on the lent GPU machine, downloaded here; and the one command to run there.

    PYTHONPATH=$PWD python bench/device_wheels.py          # ~1-2 minutes: probe, download, sizes, command

That machine (docs/gpu_check.md) has Python 3.12, torch 2.11 (CUDA) and many packages, no network, and none
of dvc, dvclive, jsonschema or pandera. Which packages to carry is measured, not listed by hand:
1. probe: `gpu_check.py --smoke` runs every part on the CPU here, in a copy of the checkout as the device
   gets it (no .git), each process recording the modules it imported (a sitecustomize on PYTHONPATH), the
   stage processes of the end-to-end part included;
2. those modules' distributions, less the standard library, this project and DEVICE_PACKAGES (what the
   machine already holds), at the versions installed here (the ones the tests ran with);
3. `pip download --no-deps --only-binary=:all:` of each for CPython 3.12 on manylinux x86_64 into WHEEL_DIR
   (ignored by git), the total checked against CARRY_LIMIT_MIB (the tool carries 64 MiB in all).
It prints each wheel, the total, and the command line for the device tool (`carry: [".device-wheels"]`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / ".device-wheels"
CARRY_LIMIT_MIB = 40  # of the 64 MiB the device tool carries: the working tree travels too
PYTHON_VERSION = "3.12"
PLATFORMS = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
)
PROJECT_MODULES = {
    "hrm",
    "stages",
    "bench",
    "_common",
    "gpu_check",
    "device_wheels",
    "sitecustomize",
    "tests",
}
# The machine's Python packages as the device tool's notes list them (read 2026-11-17): carried only if missing.
DEVICE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split()
RECORDER = """
import atexit, os, sys
def _record():
    with open(os.path.join(os.environ["HRM_IMPORT_LOG"], f"{os.getpid()}.txt"), "w") as handle:
        handle.write("\\n".join(sorted({name.split(".")[0] for name in list(sys.modules)})))
atexit.register(_record)
"""


def normalized(name: str) -> str:
    """PEP 503 form of a distribution name (so 'PyYAML' and 'pyyaml' are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def device_copy(root: Path) -> Path:
    """What the device tool sends: the files git tracks or would add, without .git."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True
    )
    if listed.returncode != 0:
        raise SystemExit(f"git ls-files failed in {REPO}: {listed.stderr.decode()[-500:]}")
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    return root


def probe_modules(log_dir: Path) -> set[str]:
    """Top-level modules imported by `gpu_check.py --smoke` and every process it starts, run in a copy of
    the checkout without .git as on the device (dvclive, for one, takes another path outside a git repo)."""
    checkout = device_copy(log_dir / "checkout")
    hook = log_dir / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORDER, encoding="utf-8")
    env = dict(os.environ, HRM_IMPORT_LOG=str(log_dir), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), str(hook)])
    command = [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(log_dir / "r.json")]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"the smoke run failed (fix it first):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    logs = list(log_dir.glob("*.txt"))
    if len(logs) < 2:
        raise SystemExit(f"the import recorder wrote {len(logs)} logs: sitecustomize was not picked up")
    return {line for log in logs for line in log.read_text(encoding="utf-8").split()}


def needed_distributions(modules: set[str]) -> dict[str, str]:
    """{distribution: version installed here} for the modules' distributions the device lacks."""
    owners = importlib.metadata.packages_distributions()
    device = {normalized(name) for name in DEVICE_PACKAGES}
    needed: dict[str, str] = {}
    for module in modules - set(sys.stdlib_module_names) - PROJECT_MODULES:
        for dist in owners.get(module, []):
            if normalized(dist) not in device:
                needed[normalized(dist)] = importlib.metadata.version(dist)
    return dict(sorted(needed.items()))


def download(needed: dict[str, str], target: Path) -> dict[str, str]:
    """One binary wheel per distribution for the device's Python and platform, into a fresh `target`: the
    version installed here, else (no wheel of it for CPython 3.12) the newest that has one. {dist: version
    taken} for those that differ from here."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(target)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    other_versions = {}
    for dist, version in needed.items():
        if subprocess.run([*command, f"{dist}=={version}"], capture_output=True).returncode == 0:
            continue
        done = subprocess.run([*command, dist], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"pip download {dist} failed:\n{done.stderr[-2000:]}")
        other_versions[dist] = wheel_version(target, dist)
    return other_versions


def wheel_version(folder: Path, dist: str) -> str:
    """The version in the file name of `dist`'s wheel in `folder` (name-version-tags.whl)."""
    prefix = dist.replace("-", "_").lower() + "-"
    (wheel,) = [w for w in folder.glob("*.whl") if w.name.lower().startswith(prefix)]
    return wheel.name.split("-")[1]


DEVICE_SITE = (
    "/tmp/site"  # where the device command installs the carried wheels (on PYTHONPATH after the checkout)
)


def install_prefix(folder: str, site: str = DEVICE_SITE) -> str:
    """The start of every device command: the carried wheels into `site` (exit 3 if that fails), on PYTHONPATH."""
    return (
        "set -o pipefail; "
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target {site} {folder}/*.whl"
        f" || exit 3; export PYTHONPATH=$PWD:{site} PYTHONUNBUFFERED=1; "
    )


def device_command(folder: str, site: str = DEVICE_SITE, check_args: str = "") -> str:
    """The one command line for the device tool's `run` (carry: [folder]); the JSON and log land in $OUT.
    `site` and `check_args` (`--smoke`) let bench/device_rehearsal.py run this very line on the CPU."""
    check = f"python3 bench/gpu_check.py {check_args} --out $OUT/gpu_check.json".replace("  ", " ")
    return (
        install_prefix(folder, site)
        + "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/nvidia-smi.csv; "
        + f"{check} 2>&1 | tee $OUT/gpu_check.log"
    )


def budget_command(folder: str, site: str = DEVICE_SITE) -> str:
    """The budget study's own call (bench/gpu_budget.py): its reports under $OUT/gpu-budget, its log beside."""
    return (
        install_prefix(folder, site)
        + "python3 bench/gpu_budget.py --out $OUT/gpu-budget 2>&1 | tee $OUT/gpu-budget.log"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=WHEEL_DIR, help="where the wheels go (git-ignored)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        modules = probe_modules(Path(tmp))
    needed = needed_distributions(modules)
    print(f"probe: {len(modules)} top-level modules imported; the device lacks {len(needed)} distributions:")
    print("  " + ", ".join(f"{d}=={v}" for d, v in needed.items()))
    other_versions = download(needed, args.dir)
    for dist, version in other_versions.items():
        print(
            f"  {dist}: no CPython {PYTHON_VERSION} wheel of {needed[dist]} (installed here); took {version}"
        )
    wheels = sorted(args.dir.glob("*.whl"))
    total = sum(wheel.stat().st_size for wheel in wheels)
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dir} (limit {CARRY_LIMIT_MIB} MiB)")
    if len(wheels) != len(needed):
        raise SystemExit(f"expected {len(needed)} wheels, pip left {len(wheels)}")
    if total > CARRY_LIMIT_MIB * 2**20:
        raise SystemExit(f"the wheels exceed {CARRY_LIMIT_MIB} MiB: the device tool could not carry them")
    folder = (
        args.dir.resolve().relative_to(REPO).as_posix()
        if args.dir.resolve().is_relative_to(REPO)
        else args.dir
    )
    print(f'\ndevice run (carry: ["{folder}"], timeout_s: 540):\n{device_command(str(folder))}')
    print(
        f'\nbudget study, a call of its own (carry: ["{folder}"], timeout_s: 600):\n{budget_command(str(folder))}'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
