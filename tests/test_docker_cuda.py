"""The CUDA image built for real with torch from PyPI (`pytest -m docker -s tests/test_docker_cuda.py`;
docs/docker.md, "CUDA image").

The Dockerfile with `TORCH_SOURCE=pypi` (PyPI's Linux torch wheel is a CUDA build; the PyTorch index and
Docker Hub's nvidia/cuda are not reachable from the machines this is built on) on the local Debian base that
tests/test_docker.py makes; then, without a GPU: torch in the image is a CUDA build (`torch.version.cuda`
set), `bench/gpu_check.py --smoke` passes on the CPU, and `dvc repro` of the tiny profile runs on a checkout
mounted at /work. Prints the build time and image size with `-s`. Marked `slow` too and kept out of CI's
Docker run (`.ci/run` names tests/test_docker.py): ~3 GB of CUDA wheels, ~11 minutes to build on 2 cores
with nothing cached, 3-7 minutes for the checks.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_docker import (
    BASE_IMAGE,
    chown_tree,
    docker_or_skip,
    make_base_image,
    ok,
    pip_cert,
    sh,
    with_network,
)

from tests.conftest import REPO, copy_checkout, tiny_checkout

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = "hrm-city-routing:pypi"
IMAGE_UID = 1000  # the image's user (Dockerfile USER_UID)
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def docker() -> str:
    return docker_or_skip()


@pytest.fixture(scope="module")
def cuda_image(docker: str, tmp_path_factory: pytest.TempPathFactory):
    """The image built from this checkout's Dockerfile and .dockerignore, torch from pip's own index."""
    make_base_image(docker)
    context = copy_checkout(tmp_path_factory.mktemp("context"), exclude=())
    build = [docker, "build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "TORCH_SOURCE=pypi"]
    cert = pip_cert()
    if cert:
        build += ["--secret", f"id=pip_cert,src={cert}"]
    started = time.perf_counter()
    ok(with_network([*build, "-t", IMAGE, str(context)], timeout=3600))  # retries reuse the layers built
    FIGURES["build_s"] = round(time.perf_counter() - started, 1)
    FIGURES["image_gb"] = round(
        int(ok(sh([docker, "image", "inspect", "--format", "{{.Size}}", IMAGE]))) / 1e9, 2
    )
    yield IMAGE
    print(f"\nCUDA image (TORCH_SOURCE=pypi): {json.dumps(FIGURES)}")


def _checkout(root: Path) -> tuple[Path, list[str]]:
    """A tiny-profile git checkout and the `docker run` user flags that let the container write to it."""
    tiny_checkout(root, exclude=("dvc.lock", "wheels/"))
    if os.geteuid() == 0:  # root hands the copy to the image's user
        chown_tree(root, IMAGE_UID)
        return root, []
    return root, ["--user", f"{os.getuid()}:{os.getgid()}"]


def test_torch_in_the_image_is_a_cuda_build(docker, cuda_image):
    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    said = ok(sh([docker, "run", "--rm", "--entrypoint", "python", cuda_image, "-c", probe])).split()
    FIGURES["torch"], FIGURES["torch.version.cuda"] = said
    assert said[1] != "None", said


def test_the_build_leaves_no_compile_cache_in_the_image(docker, cuda_image):
    """The smoke step's torch.compile writes under TMPDIR too (Inductor's precompiled headers, ~150 MB)."""
    left = ok(sh([docker, "run", "--rm", "--entrypoint", "sh", cuda_image, "-c", "ls -A /tmp"])).split()
    assert not [name for name in left if name.startswith(("torchinductor", "inductor"))], left


def test_gpu_check_smoke_passes_on_the_cpu(docker, cuda_image, tmp_path):
    checkout, user = _checkout(tmp_path / "checkout")
    script = (
        "python bench/gpu_check.py --smoke --out /tmp/gpu_check.json > /tmp/gpu_check.log 2>&1"
        " || { tail -c 4000 /tmp/gpu_check.log; exit 1; }; cat /tmp/gpu_check.json"
    )
    mount = ["-v", f"{checkout}:/work"]
    started = time.perf_counter()
    output = ok(sh([docker, "run", "--rm", "--shm-size=2g", *user, *mount, cuda_image, "sh", "-c", script]))
    FIGURES["smoke_s"] = round(time.perf_counter() - started, 1)
    report = json.loads(output)
    assert report["errors"] == {}, report["errors"]
    assert report["smoke"] is True


def test_tiny_dvc_repro_runs_on_the_mounted_checkout(docker, cuda_image, tmp_path):
    checkout, user = _checkout(tmp_path / "checkout")
    volume = f"hrm-test-cache-{uuid.uuid4().hex[:8]}"  # a fresh DVC cache: every stage runs
    mount = ["-v", f"{checkout}:/work", "-v", f"{volume}:/cache"]
    try:
        started = time.perf_counter()
        repro = ok(sh([docker, "run", "--rm", "--shm-size=2g", *user, *mount, cuda_image, "dvc", "repro"]))
        FIGURES["repro_s"] = round(time.perf_counter() - started, 1)
        status = ok(sh([docker, "run", "--rm", *user, *mount, cuda_image, "dvc", "status"]))
    finally:
        sh([docker, "volume", "rm", "-f", volume])
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]:
        assert f"Running stage '{stage}'" in repro, (stage, repro[-3000:])
    assert "Data and pipelines are up to date" in status, status
