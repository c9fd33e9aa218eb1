"""Which SDPA kernels run here and how far each is from float64 plain attention on the same (rounded) inputs,
forward and backward: measured here, judged by `hrm doctor`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SdpaRuns:
    """What `measure` saw; per kernel None where it does not run here."""

    runs: dict[str, float | None]  # kernel -> max abs diff of the output
    grad_runs: dict[str, float | None]  # kernel -> max abs diff of dq, dk, dv relative to the largest one
    errors: dict[str, str]  # kernel -> why it did not run (first line)
    default_pick: str | None  # the kernel SDPA picks by itself (None: unknown)
    default_diff: float  # max abs diff of SDPA as the model calls it
    enabled: dict[str, bool]  # torch.backends.cuda.<kernel>_sdp_enabled() on CUDA; empty elsewhere


def nan_max(values: Iterable[float]) -> float | None:
    """The largest value, NaN if any is NaN (Python's max keeps or drops a NaN by its position); None if empty."""
    values = list(values)
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values, default=None)


def backend_names() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }


def default_pick(device: str, dtype_name: str, heads: int, head_dim: int) -> str | None:
    """The kernel SDPA picks by itself on `device` for these sizes (flash, mem_efficient, cudnn, math)."""
    import torch

    query = torch.zeros(1, heads, 8, head_dim, device=torch.device(device), dtype=getattr(torch, dtype_name))
    try:  # a private but long-standing helper of the SDPA dispatcher
        chosen = int(torch._fused_sdp_choice(query, query, query))
    except (AttributeError, RuntimeError, TypeError):
        return None
    return {int(b.value): n for n, b in backend_names().items()}.get(chosen)


def _inputs(device: str, dtype: Any, shape: tuple[int, ...], seed: int) -> list[Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3)]


def _run_kernel(
    backend: Any, inputs: list[Any], grad_out: Any, reference: Any, reference_grads: Any
) -> tuple[float | None, float | None, str | None]:
    """(max abs diff of the output, relative max abs diff of dq/dk/dv, error) of one SDPA kernel."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    inputs = [t.detach().requires_grad_(True) for t in inputs]
    try:
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(*inputs)
        diff = float((out.detach().double().cpu() - reference).abs().max())
    except RuntimeError as err:
        return None, None, str(err).splitlines()[0][:160]
    try:
        with sdpa_kernel(backend):
            grads = torch.autograd.grad(out, inputs, grad_out)
    except RuntimeError as err:
        return diff, None, "backward: " + str(err).splitlines()[0][:150]
    relative = [
        float((g.double().cpu() - r).abs().max() / r.abs().max().clamp_min(1e-30))
        for g, r in zip(grads, reference_grads, strict=True)
    ]
    return diff, nan_max(relative), None


def measure(device: str, dtype_name: str, heads: int, head_dim: int, seq: int) -> SdpaRuns:
    """Every kernel, and SDPA's own pick, on seeded inputs [2, heads, seq, head_dim] against float64."""
    import torch
    import torch.nn.functional as F

    dtype, shape = getattr(torch, dtype_name), (2, heads, seq, head_dim)
    query, key, value = _inputs(device, dtype, shape, 1234)
    grad_out = _inputs(device, dtype, shape, 99)[0]
    exact_q, exact_k, exact_v = exact = [
        t.detach().double().cpu().requires_grad_(True) for t in (query, key, value)
    ]
    # HRM's attention written out: softmax(Q K^T / sqrt(d)) V, non-causal, no mask
    reference = torch.softmax(exact_q @ exact_k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1) @ exact_v
    reference_grads = torch.autograd.grad(reference, exact, grad_out.double().cpu())
    reference = reference.detach()
    runs, grad_runs, errors = {}, {}, {}
    for name, backend in backend_names().items():
        runs[name], grad_runs[name], error = _run_kernel(
            backend, [query, key, value], grad_out, reference, reference_grads
        )
        if error:
            errors[name] = error
    with torch.no_grad():
        default_out = F.scaled_dot_product_attention(query, key, value)
    cuda = device.startswith("cuda")
    enabled = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")() for name in runs} if cuda else {}
    default_diff = float((default_out.double().cpu() - reference).abs().max())
    pick = default_pick(device, dtype_name, heads, head_dim)
    return SdpaRuns(runs, grad_runs, errors, pick, default_diff, enabled)
