# HRM city routing on a clean GPU machine (or a CPU one). Build and run commands: docs/docker.md.
# Needs BuildKit (Docker's default builder since 23.0; `DOCKER_BUILDKIT=1` on 20.10) for the RUN mounts.
#
# The image holds the environment (CUDA build of torch, the project's dependencies, git, dvc); the pipeline
# runs on a checkout mounted at /work, so `dvc repro` and `dvc exp run` see the user's git history, params
# and outputs. PYTHONPATH=. makes the `hrm` package of the checkout a command runs in (the mount, or DVC's
# temporary copy for `dvc exp run --temp` and queued experiments) win over the copy installed here.
#
# Base: the CUDA runtime image (CUDA 12.8 runtime, driver capabilities for `docker run --gpus all`). The torch
# wheel brings its own cuBLAS/cuDNN/NCCL as pip packages, so the slim `base` flavour is enough; CUDA 12.8
# needs an NVIDIA driver >= 570 on the host (R570+; Blackwell, Hopper, Ada, Ampere, Turing GPUs).
# BASE_IMAGE: any Debian or Ubuntu image whose `python3` is 3.11 or newer (the CPU image: debian bookworm).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_SOURCE=index
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_WHEEL=
ARG USER_UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=. \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    HOME=/home/hrm \
    MPLBACKEND=Agg

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The base's python3 (3.12 on Ubuntu 24.04, 3.11 on Debian bookworm; refused below 3.11), git for DVC, and
# what `train.compile: true` builds with at run time: Triton compiles its CUDA launcher with the C compiler
# against Python.h, Inductor's CPU kernels need a C++ compiler (g++ brings gcc and the C library headers;
# python3-dev the headers of the base's python3). The build stops if Python.h is not where Python looks.
# Unpinned apt versions on purpose: the archive drops old ones, and the pinned base tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ libc6-dev git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'the base image has Python ' + sys.version.split()[0] + '; the project needs 3.11 or newer')" \
    && python3 -c "import pathlib, sys, sysconfig; h = pathlib.Path(sysconfig.get_paths()['include'], 'Python.h'); sys.exit(0 if h.is_file() else f'{h} missing: torch.compile cannot build')" \
    && gcc --version > /dev/null && g++ --version > /dev/null \
    && python3 -m venv "$VIRTUAL_ENV"

# pip reaches PyPI through a TLS-intercepting proxy only with that proxy's CA bundle: pass it as the build
# secret `pip_cert` (`--secret id=pip_cert,src=<bundle>`); it is mounted for one RUN at a time, never stored.
# Without the secret pip uses the system's CA certificates.

# 1) torch, pinned (largest layer, changes least): the CUDA 12.8 build from the PyTorch index
# (TORCH_SOURCE=index, TORCH_INDEX_URL), or with TORCH_SOURCE=pypi from pip's own index (PyPI, or the mirror
# pip is set up with), whose Linux wheel is a CUDA build too (2.13.0: CUDA 13.0, driver R580+), for hosts
# that reach PyPI but not the PyTorch index; or, when TORCH_WHEEL names a wheel in the build context's
# wheels/ folder, that wheel (the CPU image: no CUDA index needed). Named, not picked up: a CPU wheel left in
# wheels/ must not slip into the CUDA image. The folder is bind-mounted for this RUN only, so the wheel takes
# no room in the image's layers; the version check below pins what the wheel file brings (DL3013 cannot see
# that). Without TORCH_WHEEL the build stops unless torch is a CUDA build (`torch.version.cuda` set): a mirror
# that serves a CPU-only torch under the same version must not make a "CUDA" image that cannot see a GPU.
# hadolint ignore=DL3013
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \
    --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && if [ -n "$TORCH_WHEEL" ]; then pip install "/tmp/wheels/${TORCH_WHEEL}"; \
    elif [ "$TORCH_SOURCE" = pypi ]; then pip install "torch==${TORCH_VERSION}"; \
    elif [ "$TORCH_SOURCE" = index ]; then pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
    else echo "TORCH_SOURCE must be index or pypi, got '${TORCH_SOURCE}'" >&2; exit 1; fi \
    && python -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '${TORCH_VERSION}' else 'torch ' + v + ' installed, TORCH_VERSION is ${TORCH_VERSION}')" \
    && if [ -z "$TORCH_WHEEL" ]; then python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch ' + torch.__version__ + ' from TORCH_SOURCE=${TORCH_SOURCE} is a CPU-only build (torch.version.cuda is None); this image needs a CUDA build')"; fi

# 2) the project's dependencies, read from pyproject.toml (torch is already satisfied). README.md (pyproject's
# `readme`) comes with the project in step 3, so that editing it does not download the dependencies again.
COPY pyproject.toml /tmp/hrm-src/
RUN --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python -c "import tomllib, pathlib; deps = tomllib.loads(pathlib.Path('/tmp/hrm-src/pyproject.toml').read_text())['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3) the project itself (the `hrm` command, with schemas/ as data files); no dependency changes here. The
# smoke test compiles and runs a function with torch.compile (the doctor's compile check, on the CPU), with
# TMPDIR in its scratch folder too: Inductor puts its precompiled headers under the temporary folder whatever
# its cache folder is (147 MB left in /tmp/torchinductor_root otherwise).
COPY README.md /tmp/hrm-src/
COPY schemas /tmp/hrm-src/schemas
COPY hrm /tmp/hrm-src/hrm
RUN --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-deps /tmp/hrm-src && rm -rf /tmp/hrm-src \
    && python -c "import torch, hrm, hrm.doctor; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && mkdir /tmp/inductor-smoke \
    && TMPDIR=/tmp/inductor-smoke TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-smoke python -c "from hrm.runtime import compile_tiny_function; print('torch.compile on the CPU: %.0f s' % compile_tiny_function('cpu'))" \
    && rm -rf /tmp/inductor-smoke \
    && dvc --version && hrm --help > /dev/null

# Non-root user (uid 1000, as on most single-user Linux hosts, so files written to the mount are the user's).
# Ubuntu 24.04 images ship a user `ubuntu` with uid 1000: it makes way. HOME and the DVC cache are writable
# by any uid, for `docker run --user "$(id -u):$(id -g)"`.
RUN if id ubuntu > /dev/null 2>&1; then userdel --remove ubuntu; fi \
    && useradd --uid "$USER_UID" --create-home --shell /bin/bash hrm \
    && chmod 1777 /home/hrm \
    && mkdir -p /cache /work \
    && chown hrm:hrm /cache /work \
    && chmod 1777 /cache \
    && git config --system --add safe.directory /work \
    && git config --system user.name "hrm container" \
    && git config --system user.email "hrm@container.invalid" \
    && dvc config --system cache.dir /cache \
    && dvc config --system core.analytics false \
    && dvc config --system core.check_update false

# The entry point checks that /work is a checkout (params.yaml; a git repository for dvc) before it runs the
# command, so a missing or wrong mount gets one clear line (docker/entrypoint.sh). No command: `hrm doctor`.
COPY docker/entrypoint.sh /usr/local/bin/hrm-entrypoint

USER ${USER_UID}
WORKDIR /work
ENTRYPOINT ["hrm-entrypoint"]
CMD ["hrm", "doctor"]
