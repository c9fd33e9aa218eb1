"""bench/gpu_check.py (the GPU acceptance run) imports and stops cleanly without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_check_says_no_cuda_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "no CUDA" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_gpu_check_parts_import_on_cpu():
    """Every part's imports resolve (a rename in hrm would otherwise surface only on a GPU)."""
    import ast
    import importlib
    import importlib.util

    path = REPO / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the parts import inside their functions: resolve every `from X import name` of the file, wherever it is
    imported = 0
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            source = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(source, alias.name):  # a submodule (`from hrm import doctor`)
                    importlib.import_module(f"{node.module}.{alias.name}")
                imported += 1
    assert imported >= 10  # the hrm pieces the parts use, not only the top-level stdlib imports
    from hrm.doctor import step_flops

    assert (module.no_cuda_message() is None) == torch.cuda.is_available()
    flops, formula = step_flops(module.paper_params()["arch"], 1600, 24, 1)
    assert flops > 0 and "tokens" in formula
