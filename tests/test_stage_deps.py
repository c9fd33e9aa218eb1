"""dvc.yaml lists every project module a stage imports: the import graph of `stages/<name>.py`, built
statically (ast, every `import hrm...` / `from hrm... import` anywhere in a file, function-level imports
included), must be covered by the stage's deps (a folder dep covers the modules inside it). Otherwise a
change to a missing module leaves `dvc repro` keeping stale outputs."""

from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.conftest import REPO

PROJECT_PACKAGES = ("hrm", "stages")


def module_file(module: str) -> Path | None:
    """hrm.data.spec -> hrm/data/spec.py (or the package's __init__.py); None if not a project module."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every project module a file imports, anywhere in it; `from a.b import c` counts a.b and, when c is
    a module, a.b.c. Importing a.b.c also runs the packages a and a.b."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = set()
    for name in found:
        if name.split(".")[0] not in PROJECT_PACKAGES:
            continue
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if module_file(prefix) is not None:
                modules.add(prefix)
    return modules


def import_closure(entry: str) -> set[Path]:
    """Files of every project module reachable from module `entry`, itself included."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module_file(module)) - seen)
    return {module_file(module).relative_to(REPO) for module in seen}


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    posix = PurePosixPath(path.as_posix())
    return any(posix == PurePosixPath(dep) or PurePosixPath(dep) in posix.parents for dep in deps)


def test_the_graph_follows_function_level_imports():
    # stages/train.py imports hrm.training.loop only inside main(); loop imports hrm.config at the top
    closure = import_closure("stages.train")
    assert Path("hrm/training/loop.py") in closure and Path("hrm/config.py") in closure
    assert Path("hrm/__init__.py") in closure and Path("stages/train.py") in closure


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_every_imported_project_module(name):
    stage = stages()[name]
    entry = stage["cmd"].split(" -m ", 1)[1].split()[0]  # python -m stages.<name> --params params.yaml
    deps = [dep for dep in stage.get("deps", []) if "${" not in dep]
    missing = sorted(p.as_posix() for p in import_closure(entry) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} imports modules its deps miss: {missing}"


def test_the_check_can_fail():
    assert not covered(Path("hrm/config.py"), ["hrm/data", "hrm/io.py"])
    assert covered(Path("hrm/data/spec.py"), ["hrm/data"]) and not covered(
        Path("hrm/database.py"), ["hrm/data"]
    )
