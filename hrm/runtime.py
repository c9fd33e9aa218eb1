"""Where and how torch runs: device, forward dtype, CPU threads, determinism, seeding, and what this
machine's torch can do (a GPU it cannot use, bf16 in hardware, torch.compile's tool chain).

One module for train, evaluate and `hrm doctor`, so the three agree on what `train.device: auto`,
`arch.forward_dtype: auto`, `train.threads` and `train.deterministic` mean. torch is imported inside functions.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from hrm.io import UserError

DTYPE_NAMES = ("float32", "bfloat16", "float16")
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


def device_choice(request: str) -> tuple[str | None, str]:
    """(device string, why) for auto | cpu | cuda[:n] | mps; (None, reason) when the request cannot be met."""
    import torch

    request = request.strip().lower()
    if request == "auto":
        if torch.cuda.is_available():
            return "cuda", "auto: CUDA is available"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps", "auto: Apple MPS is available"
        return "cpu", "auto: no CUDA or MPS device, using the CPU"
    if request == "cpu":
        return "cpu", "requested"
    if request == "cuda" or request.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = torch.version.cuda
            why = (
                f"torch {torch.__version__} is built for CUDA {build} but no CUDA device or driver is visible"
                if build
                else f"torch {torch.__version__} is a CPU-only build (install a CUDA build, see docs/windows.md)"
            )
            return None, f"device '{request}' requested but CUDA is not available: {why}"
        index_text = request.split(":", 1)[1] if ":" in request else "0"
        if not index_text.isdigit():
            return None, f"unknown device '{request}' (expected auto, cpu, cuda, cuda:N or mps)"
        if int(index_text) >= torch.cuda.device_count():
            return None, f"device '{request}' requested but only {torch.cuda.device_count()} CUDA device(s)"
        return request, "requested"
    if request == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            return None, "device 'mps' requested but Apple MPS is not available"
        return "mps", "requested"
    return None, f"unknown device '{request}' (expected auto, cpu, cuda, cuda:N or mps)"


def resolve_device(request: str, local_rank: int = 0) -> Any:
    """The torch.device for `train.device`; under torchrun plain `cuda` means this process's GPU."""
    import torch

    device, why = device_choice(request)
    if device is None:
        raise UserError(f"params.yaml: train.device: {why}")
    if device == "cuda":
        device = f"cuda:{local_rank}"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return resolved


def dtype_name(forward_dtype: str, device: Any) -> str:
    """`arch.forward_dtype`: auto = bfloat16 on CUDA (tensor cores), float32 elsewhere (bf16 matmuls are
    20-50x slower on CPUs); otherwise the name itself, checked."""
    if forward_dtype == "auto":
        device_type = str(device).split(":", 1)[0] if device is not None else "cpu"
        return "bfloat16" if device_type == "cuda" else "float32"
    if forward_dtype not in DTYPE_NAMES:
        raise UserError(
            f"params.yaml: arch.forward_dtype must be auto, {', '.join(DTYPE_NAMES)}; got {forward_dtype!r}"
        )
    return forward_dtype


def set_cpu_threads(threads: int) -> None:
    """Intra-op CPU threads; 0 keeps PyTorch's default. Small models on a busy CPU run many times faster on
    one thread than on several (the OpenMP threads wait for each other on every small op)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def set_determinism(enabled: bool, device: Any) -> None:
    """torch.use_deterministic_algorithms (+ the cuBLAS workspace it needs on CUDA), cudnn autotuning off."""
    import torch

    if enabled and str(device).startswith("cuda"):
        # cuBLAS reads this when its handle is created; it must be set before the first matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled


def determinism_state() -> tuple[bool, bool]:
    """What `set_determinism` changes, to restore it afterwards (doctor's checks)."""
    import torch

    return torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark


def restore_determinism(state: tuple[bool, bool]) -> None:
    import torch

    torch.use_deterministic_algorithms(state[0])
    torch.backends.cudnn.benchmark = state[1]


def seed_everything(seed: int) -> None:
    """The global generators (Python, NumPy, torch CPU and CUDA); the model's own draws use their own."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Every global generator of this process (what `seed_everything` seeds), in types that
    ``torch.load(weights_only=True)`` accepts: a checkpoint holds them so a resumed run draws on exactly."""
    import numpy as np
    import torch

    numpy_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what `rng_states` returned."""
    import numpy as np
    import torch

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def visible_nvidia_gpu(dev: Path = Path("/dev"), proc: Path = Path("/proc/driver/nvidia")) -> str | None:
    """What shows an NVIDIA GPU is handed to this machine or container (a device node, the driver's /proc
    entry), or None. Lets a CPU-only torch say that it cannot use the GPU it was given (`docker run --gpus`)."""
    nodes = sorted(dev.glob("nvidia[0-9]*"))
    if nodes:
        return nodes[0].as_posix()
    if (proc / "version").exists():
        return (proc / "version").as_posix()
    return None


def compile_tiny_function(device: str) -> float:
    """torch.compile a small function, run it on `device` and compare with eager; the seconds it took.

    This is the whole tool chain the trainer's `torch.compile` uses: Dynamo, Inductor and the code it builds
    (Triton kernels and their C launcher on CUDA, C++ on the CPU), so a missing compiler or Python.h fails here.
    """
    import torch

    def tiny(x: Any) -> Any:
        return torch.nn.functional.silu(x) * 2.0 + 1.0

    started = time.perf_counter()
    x = torch.linspace(-3.0, 3.0, 64, device=torch.device(device))
    got = torch.compile(tiny, dynamic=False)(x)
    if not torch.allclose(got, tiny(x), rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"the compiled function gave {got[:3].tolist()}, eager {tiny(x)[:3].tolist()}")
    return time.perf_counter() - started


def native_bf16(device: str) -> bool:
    """bf16 in hardware (compute capability 8.0+); `is_bf16_supported()` alone also counts emulation."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the keyword (it came in 2.4): the same rule, by hand
        return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def bf16_matmul_slowdown() -> float:
    """Time of a bf16 matmul over the same in fp32 on the CPU: one SwiGLU-sized product (64 tokens x hidden
    512 -> 1536), best of 2 after a warm-up (small sizes are dominated by call overhead and hide the gap)."""
    import math

    import torch

    generator = torch.Generator().manual_seed(0)
    tokens, weight = torch.randn(64, 512, generator=generator), torch.randn(512, 1536, generator=generator)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = tokens.to(dtype), weight.to(dtype)
        x @ w  # warm-up
        best = math.inf
        for _ in range(2):
            start = time.perf_counter()
            x @ w
            best = min(best, time.perf_counter() - start)
        timings[str(dtype).removeprefix("torch.")] = best
    return timings["bfloat16"] / max(timings["float32"], 1e-12)
