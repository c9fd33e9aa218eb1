"""Where and how torch runs (device, forward dtype, threads, determinism, seeds), one module for train,
evaluate and `hrm doctor` so the three read `auto` and `train.deterministic` alike. torch is imported lazily."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from hrm.io import UserError

DTYPE_NAMES = ("float32", "bfloat16", "float16")
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
UNKNOWN_DEVICE = "unknown device '{}' (expected auto, cpu, cuda, cuda:N or mps)"


def device_choice(request: str) -> tuple[str | None, str]:
    """(device string, why) for auto | cpu | cuda[:n] | mps; (None, reason) when the request cannot be met."""
    import torch

    request = request.strip().lower()
    mps = torch.backends.mps.is_available()
    if request == "auto":
        if torch.cuda.is_available():
            return "cuda", "auto: CUDA is available"
        if mps:
            return "mps", "auto: Apple MPS is available"
        return "cpu", "auto: no CUDA or MPS device, using the CPU"
    if request == "cpu":
        return "cpu", "requested"
    if request == "mps":
        return (
            ("mps", "requested") if mps else (None, "device 'mps' requested but Apple MPS is not available")
        )
    if request != "cuda" and not request.startswith("cuda:"):
        return None, UNKNOWN_DEVICE.format(request)
    if not torch.cuda.is_available():
        why = (
            f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but no CUDA device or driver is visible"
            if torch.version.cuda
            else f"torch {torch.__version__} is a CPU-only build (install a CUDA build, see docs/windows.md)"
        )
        return None, f"device '{request}' requested but CUDA is not available: {why}"
    index = request[5:] if ":" in request else "0"
    if not index.isdigit():
        return None, UNKNOWN_DEVICE.format(request)
    if int(index) >= torch.cuda.device_count():
        return None, f"device '{request}' requested but only {torch.cuda.device_count()} CUDA device(s)"
    return request, "requested"


def resolve_device(request: str, local_rank: int = 0) -> Any:
    """The torch.device for `train.device`; under torchrun plain `cuda` means this process's GPU."""
    import torch

    device, why = device_choice(request)
    if device is None:
        raise UserError(f"params.yaml: train.device: {why}")
    resolved = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return resolved


def dtype_name(forward_dtype: str, device: Any) -> str:
    """`arch.forward_dtype`: auto = bfloat16 on CUDA (tensor cores), float32 elsewhere (CPU bf16 matmuls are
    20-50x slower); otherwise the name itself, checked."""
    if forward_dtype == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    if forward_dtype not in DTYPE_NAMES:
        raise UserError(
            f"params.yaml: arch.forward_dtype must be auto, {', '.join(DTYPE_NAMES)}; got {forward_dtype!r}"
        )
    return forward_dtype


def set_cpu_threads(threads: int) -> None:
    """Intra-op CPU threads (0: PyTorch's default); small models on a busy CPU run faster on one."""
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


def seed_everything(seed: int) -> None:
    """The global generators (Python, NumPy, torch CPU and CUDA); the model's own draws use their own."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Every global generator's state, in types `torch.load(weights_only=True)` accepts (for checkpoints)."""
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
    numpy_state = dict(states["numpy"])
    key, pos = numpy_state.pop("key").numpy().astype(np.uint32), numpy_state.pop("pos")
    np.random.set_state(numpy_state | {"state": {"key": key, "pos": pos}})
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def compile_tiny_function(device: str) -> float:
    """Seconds to torch.compile a small function, run it on `device` and check it against eager: the trainer's
    whole tool chain (Dynamo, Inductor, Triton or C++ and their compiler), so a missing compiler fails here."""
    import torch

    def tiny(x: Any) -> Any:
        return torch.nn.functional.silu(x) * 2.0 + 1.0

    started = time.perf_counter()
    x = torch.linspace(-3.0, 3.0, 64, device=torch.device(device))
    got = torch.compile(tiny, dynamic=False)(x)
    if not torch.allclose(got, tiny(x), rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"the compiled function gave {got[:3].tolist()}, eager {tiny(x)[:3].tolist()}")
    return time.perf_counter() - started
