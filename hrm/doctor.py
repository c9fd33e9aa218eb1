"""`hrm doctor`: check this machine against the configured run before spending hours on it.

Each check returns a `Check` (ok / warn / fail / skip). A `fail` means the configured run cannot work as
configured here (CUDA requested but absent, SDPA wrong, non-deterministic gradients while `deterministic: true`,
the batch does not fit): the command then exits 1. The checks run real kernels on this machine. The one
estimate is training memory off CUDA (and on CUDA under `--quick`): the step is traced on PyTorch's "meta"
device, which computes shapes and nothing else; on CUDA it is measured. The optimizer state is added
analytically. The output says which method gave each figure.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hrm import runtime
from hrm.config import ConfigError, load_params, run_params
from hrm.io import UserError
from hrm.runtime import CUBLAS_DETERMINISTIC_WORKSPACE
from hrm.training.memory import MEMORY_HEADROOM

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

# Max abs difference allowed between SDPA and a float64 plain attention on the same (rounded) inputs.
# About two units in the last place of an O(1) output for each dtype: a kernel bug is orders larger.
SDPA_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}
# Gradients (dq, dk, dv) against the float64 ones: max abs difference relative to the largest gradient.
SDPA_GRAD_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 4e-2}

DEFAULT_GRID_SEQ_LEN = 40 * 40  # paper grid, used when neither the data nor generate.rows/cols say otherwise
ADAM_STATE_COPIES = 2  # AdamATan2 keeps exp_avg and exp_avg_sq, fp32, one each per parameter
CPU_DETERMINISM_SEQ_LEN = 256


@dataclass
class Check:
    """One line of the report; `data` carries the figures for `--json`."""

    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """What the configured run needs, read from params.yaml (plus overrides)."""

    params_path: Path
    device_request: str
    arch: dict[str, Any]
    forward_dtype: str  # as configured: auto | float32 | bfloat16
    deterministic: bool
    compile: bool
    global_batch_size: int
    seed: int
    seq_len: int
    seq_len_source: str
    vocab_size: int
    num_puzzle_identifiers: int
    world_size: int
    micro_batch_size: int | None = None  # train.micro_batch_size; None = auto
    epochs: int = 0
    train: dict[str, Any] = field(default_factory=dict)  # the train section, overrides applied
    # the whole resolved params (profile and --set applied), and whether the converted data on disk was made
    # from their data settings (a profile or --set that changes the data makes it another run's data)
    params: dict[str, Any] = field(default_factory=dict)
    data_is_current: bool = True

    @property
    def per_device_batch(self) -> int:
        return self.global_batch_size // self.world_size


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


# ----------------------------------------------------------------------------------------------- config


def _data_seq_len(params: dict[str, Any], params_path: Path, data_is_current: bool) -> tuple[int, str]:
    """seq_len of the converted data if present (and made from these settings), else generate.rows*cols,
    else the paper's 40x40."""
    import json

    hrm_dir = params.get("paths", {}).get("hrm")
    if hrm_dir and data_is_current:
        metadata_file = params_path.parent / Path(hrm_dir) / "train" / "dataset.json"
        if metadata_file.is_file():
            try:
                metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
                return int(metadata["seq_len"]), f"{metadata_file.as_posix()}: seq_len"
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"{metadata_file}: field 'seq_len' unreadable ({err})") from err
    generate = params.get("generate", {})
    if isinstance(generate.get("rows"), int) and isinstance(generate.get("cols"), int):
        return generate["rows"] * generate[
            "cols"
        ], "generate.rows x generate.cols (no converted data of these settings)"
    return DEFAULT_GRID_SEQ_LEN, "paper 40x40 grid (no data, no generate.rows/cols)"


def load_run_config(
    params_path: str | Path = "params.yaml",
    device: str | None = None,
    overrides: Iterable[str] = (),
    profile: str | None = None,
    world_size: int | None = None,
) -> RunConfig:
    """The settings of the configured run; UserError naming the file and key when one is missing or wrong."""
    from hrm.data import spec

    params_path = Path(params_path)
    source = params_path.as_posix()
    overrides = list(overrides)
    try:
        on_disk = load_params(params_path)
        params = run_params(on_disk, profile, overrides, source)
    except ConfigError as err:
        raise UserError(str(err)) from err
    data_is_current = all(on_disk.get(key) == params.get(key) for key in ("generate", "convert", "paths"))

    arch, train = params["arch"], params["train"]  # types and ranges: schemas/params.schema.json
    global_batch_size = train["global_batch_size"]
    seq_len, seq_len_source = _data_seq_len(params, params_path, data_is_current)
    vehicles = params.get("generate", {}).get("vehicles")
    num_ids = (len(vehicles) if isinstance(vehicles, list) else 4) + 1  # + the blank identifier 0
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1:
        raise UserError(f"--world-size must be >= 1, got {world_size}")
    from hrm.training.loop import TrainConfig, fixed_micro_batch

    try:  # the trainer's own checks: the global batch splits over the processes, the micro-batch divides a share
        micro = fixed_micro_batch(TrainConfig.from_params(train), world_size)
    except ConfigError as err:
        raise UserError(str(err)) from err
    return RunConfig(
        micro_batch_size=micro,
        epochs=train["epochs"],
        train=dict(train),
        params=params,
        data_is_current=data_is_current,
        params_path=params_path,
        device_request=str(device or train.get("device", "auto")),
        arch=dict(arch),
        forward_dtype=str(arch.get("forward_dtype", "auto")),
        deterministic=train["deterministic"],
        compile=train["compile"],
        global_batch_size=global_batch_size,
        seed=train["seed"],
        seq_len=seq_len,
        seq_len_source=seq_len_source,
        vocab_size=spec.VOCAB_SIZE,
        num_puzzle_identifiers=num_ids,
        world_size=world_size,
    )


# ----------------------------------------------------------------------------------------------- device


def check_environment(device: str | None) -> Check:
    import torch

    data: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    detail = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU build)'}"
    if device is not None and device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        data.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_bytes=props.total_memory,
            cuda_runtime=torch.version.cuda,
        )
        detail += f"; {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB)"
    else:
        detail += f"; CPU {data['cpu_capability']}, {data['threads']} threads"
    return Check("environment", OK, detail + f"; Python {data['python']}", data)


def visible_nvidia_gpu(dev: Path = Path("/dev"), proc: Path = Path("/proc/driver/nvidia")) -> str | None:
    """What shows an NVIDIA GPU is handed to this machine or container (a device node, the driver's /proc
    entry), or None. Lets a CPU-only torch say that it cannot use the GPU it was given (`docker run --gpus`)."""
    nodes = sorted(dev.glob("nvidia[0-9]*"))
    if nodes:
        return nodes[0].as_posix()
    if (proc / "version").exists():
        return (proc / "version").as_posix()
    return None


def check_device(config: RunConfig) -> tuple[Check, str | None]:
    import torch

    from hrm.runtime import device_choice

    device, why = device_choice(config.device_request)
    gpu = visible_nvidia_gpu() if torch.version.cuda is None else None
    unusable_gpu = (
        f"an NVIDIA GPU is visible ({gpu}) but torch {torch.__version__} is a CPU-only build and cannot use it:"
        " install a CUDA build of torch (Docker: the CUDA image, docs/docker.md)"
    )
    if device is None:
        detail = f"{why}; {unusable_gpu}" if gpu else why
        return Check("device", FAIL, detail, {"requested": config.device_request}), None
    detail = f"{device} ({why})"
    status = OK
    if device == "cpu" and config.device_request == "auto":
        status = WARN
        detail += "; the paper profile needs a GPU, the CPU suits the quick profile"
    if gpu:
        status = WARN
        detail += f"; {unusable_gpu}"
    return Check("device", status, detail, {"requested": config.device_request, "device": device}), device


COMPILER_HINT = (
    "torch.compile builds C code at run time: it needs a C compiler and the Python headers (Debian/Ubuntu: "
    "apt-get install gcc python3-dev; the Docker image has them), or set train.compile: false"
)


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


def check_compile(config: RunConfig, device: str) -> Check:
    """With train.compile: true, compile and run a tiny function here: importing Triton is not enough."""
    if not config.compile:
        return Check(
            "compile", OK, "train.compile is false: eager mode, no Triton needed", {"compile": False}
        )
    try:
        import triton  # noqa: F401

        have_triton = True
    except ImportError:
        have_triton = False
    data: dict[str, Any] = {"compile": True, "triton": have_triton}
    if device.startswith("cuda") and not have_triton:
        return Check(
            "compile",
            FAIL,
            "train.compile is true but Triton is not installed (on Windows: set train.compile: false)",
            data,
        )
    try:
        seconds = compile_tiny_function(device)
    except Exception as err:  # any failure of the tool chain: the trainer's compile would fail the same way
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        data["error"] = f"{type(err).__name__}: {first_line}"
        return Check(
            "compile",
            FAIL,
            f"train.compile is true but torch.compile failed on {device}: {data['error']}. {COMPILER_HINT}",
            data,
        )
    data["seconds"] = seconds
    return Check(
        "compile",
        OK,
        f"train.compile is true: a compiled function ran on {device} in {seconds:.1f} s "
        f"(Triton installed: {have_triton})",
        data,
    )


# ------------------------------------------------------------------------------------------------- SDPA


def _backend_names() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }


def plain_attention(query: Any, key: Any, value: Any) -> Any:
    """softmax(Q K^T / sqrt(d)) V, non-causal, no mask: HRM's attention, written out."""
    import torch

    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    return torch.softmax(scores, dim=-1) @ value


def _attention_inputs(
    device: str, dtype: Any, heads: int, seq: int, head_dim: int, seed: int = 1234
) -> tuple[Any, Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (2, heads, seq, head_dim)
    return tuple(torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3))


def check_sdpa(config: RunConfig, device: str, quick: bool) -> list[Check]:
    """Which SDPA kernels run here for the configured dtype and head size, and are their outputs right?"""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    dtype = getattr(torch, dtype_name)
    hidden = int(config.arch.get("hidden_size", 512))
    heads = int(config.arch.get("num_heads", 8))
    head_dim = hidden // heads
    seq = 193 if quick else config.seq_len + 1  # odd on purpose: not a multiple of any kernel's block
    query, key, value = _attention_inputs(device, dtype, heads, seq, head_dim)
    grad_out = _attention_inputs(device, dtype, heads, seq, head_dim, seed=99)[0]
    exact = [t.detach().double().cpu().requires_grad_(True) for t in (query, key, value)]
    reference = plain_attention(*exact)
    reference_grads = torch.autograd.grad(reference, exact, grad_out.double().cpu())
    reference = reference.detach()
    tolerance = SDPA_TOLERANCE.get(dtype_name, 1e-4)
    grad_tolerance = SDPA_GRAD_TOLERANCE.get(dtype_name, 1e-4)

    flags: dict[str, bool] = {}
    if device.startswith("cuda"):
        flags = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    runs: dict[str, float | None] = {}  # backend -> max abs diff, None when it does not run here
    grad_runs: dict[str, float | None] = {}  # backend -> relative max abs diff of dq, dk, dv
    errors: dict[str, str] = {}
    for name, backend in _backend_names().items():
        inputs = [t.detach().requires_grad_(True) for t in (query, key, value)]
        try:
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(*inputs)
            runs[name] = float((out.detach().double().cpu() - reference).abs().max())
        except RuntimeError as err:
            runs[name] = grad_runs[name] = None
            errors[name] = str(err).splitlines()[0][:160]
            continue
        try:
            with sdpa_kernel(backend):
                grads = torch.autograd.grad(out, inputs, grad_out)
            grad_runs[name] = max(
                float((g.double().cpu() - r).abs().max() / r.abs().max().clamp_min(1e-30))
                for g, r in zip(grads, reference_grads, strict=True)
            )
        except RuntimeError as err:
            grad_runs[name] = None
            errors[name] = "backward: " + str(err).splitlines()[0][:150]

    default_choice = sdpa_default_pick(device, dtype_name, heads, head_dim)
    with torch.no_grad():
        default_out = F.scaled_dot_product_attention(query, key, value)
    default_diff = float((default_out.double().cpu() - reference).abs().max())

    available = [name for name, diff in runs.items() if diff is not None]
    if device == "cpu":
        picked = default_choice or ("flash" if "flash" in available else "math")
        picked = "flash (the CPU flash kernel)" if picked == "flash" else picked
        backend_detail = f"CPU: SDPA picks {picked}; kernels that run here: {', '.join(available)}"
    else:
        shown = [
            f"{n}={'on' if flags.get(n, True) else 'off'}{'' if runs[n] is not None else ' (n/a)'}"
            for n in runs
        ]
        backend_detail = f"{device}: " + ", ".join(shown) + f"; default pick: {default_choice or 'unknown'}"
    backends = Check(
        "sdpa_backends",
        OK if available else FAIL,
        backend_detail + f" [{dtype_name}, head_dim {head_dim}]",
        {
            "enabled_flags": flags,
            "runs": {n: d is not None for n, d in runs.items()},
            "default": default_choice,
            "errors": errors,
            "dtype": dtype_name,
            "head_dim": head_dim,
        },
    )

    worst = max([default_diff] + [d for d in runs.values() if d is not None])
    worst_grad = max([d for d in grad_runs.values() if d is not None], default=None)
    bad = [n for n, d in runs.items() if d is not None and d > tolerance]
    bad += [f"{n} backward" for n, d in grad_runs.items() if d is not None and d > grad_tolerance]
    if default_diff > tolerance:
        bad.append("default")
    diffs = ", ".join(
        f"{n} {d:.1e}" + (f" (grad {grad_runs[n]:.1e})" if grad_runs.get(n) is not None else "")
        for n, d in runs.items()
        if d is not None
    )
    grad_summary = f"; gradients rel. {worst_grad:.1e} (tolerance {grad_tolerance:.0e})" if worst_grad else ""
    numerics = Check(
        "sdpa_numerics",
        FAIL if bad else OK,
        f"max |SDPA - plain attention| = {worst:.2e} (tolerance {tolerance:.0e} for {dtype_name}, "
        f"seq {seq}){grad_summary}: {diffs}" + (f"; OUT OF TOLERANCE: {', '.join(bad)}" if bad else ""),
        {
            "max_abs_diff": worst,
            "per_backend": runs,
            "default_diff": default_diff,
            "tolerance": tolerance,
            "grad_max_rel_diff": worst_grad,
            "grad_per_backend": grad_runs,
            "grad_tolerance": grad_tolerance,
            "seq_len": seq,
            "dtype": dtype_name,
        },
    )
    return [backends, numerics]


def native_bf16(device: str) -> bool:
    """bf16 in hardware (compute capability 8.0+); `is_bf16_supported()` alone also counts emulation."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the keyword (it came in 2.4): the same rule, by hand
        return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def check_bf16(config: RunConfig, device: str) -> Check:
    """bf16 works on Ampere+ GPUs; on the CPU it runs but is usually slower than fp32: measure it."""
    import torch

    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    if device.startswith("cuda"):
        supported = native_bf16(device)
        if dtype_name == "bfloat16" and not supported:
            return Check(
                "bf16",
                FAIL,
                "arch.forward_dtype is bfloat16 (auto picks it on CUDA) but this GPU has no bf16 in hardware "
                "(compute capability below 8.0; torch would emulate it, slowly): set arch.forward_dtype: float32",
                {"supported": False, "forward_dtype": dtype_name},
            )
        return Check(
            "bf16",
            OK,
            f"bf16 in hardware: {supported}; forward dtype {dtype_name}",
            {"supported": supported, "forward_dtype": dtype_name},
        )
    # One SwiGLU-sized matmul (64 tokens x hidden 512 -> 1536), best of 2 after a warm-up: small sizes
    # are dominated by call overhead and hide the gap.
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
    ratio = timings["bfloat16"] / max(timings["float32"], 1e-12)
    detail = f"{device}: bf16 runs, matmul {ratio:.1f}x the time of fp32 here; forward dtype {dtype_name}"
    status = OK
    if dtype_name == "bfloat16":
        status = WARN
        detail += "; recommend arch.forward_dtype: float32 (or auto) off CUDA"
    else:
        detail += " (fp32, recommended off CUDA)"
    return Check(
        "bf16", status, detail, {"supported": True, "bf16_over_fp32_time": ratio, "forward_dtype": dtype_name}
    )


# ----------------------------------------------------------------------------------------- model steps


@dataclass
class Workload:
    """The shapes a model check runs at: the configured ones, or a scaled-down copy under --quick."""

    arch: dict[str, Any]
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    scaled_down: bool


def workload(config: RunConfig, quick: bool, max_seq_len: int | None = None) -> Workload:
    """The configured shapes; `quick` scales the model down, `max_seq_len` caps the sequence."""
    arch = dict(config.arch)
    seq_len = config.seq_len
    if quick:
        hidden = 64
        arch.update(
            hidden_size=hidden,
            num_heads=2,
            expansion=2.0,
            H_layers=1,
            L_layers=1,
            H_cycles=1,
            L_cycles=1,
            halt_max_steps=2,
        )
        if int(config.arch.get("puzzle_emb_ndim", 0)) > 0:
            arch["puzzle_emb_ndim"] = hidden
        seq_len = 16
    if max_seq_len is not None:
        seq_len = min(seq_len, max_seq_len)
    return Workload(arch, seq_len, config.vocab_size, config.num_puzzle_identifiers, quick)


def build_head(work: Workload, batch_size: int, device: str, dtype_name: str, seed: int) -> Any:
    """The ACT loss head of the configured model, built on `device` ("meta": shapes only, no memory)."""
    from hrm.models import build_model

    arch = dict(work.arch, forward_dtype=dtype_name)
    return build_model(
        arch,
        seq_len=work.seq_len,
        vocab_size=work.vocab_size,
        num_puzzle_identifiers=work.num_puzzle_identifiers,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )


def random_batch(work: Workload, batch_size: int, device: str, seed: int) -> dict[str, Any]:
    """A batch in the model's format from a seeded generator (tokens of the real vocabulary)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, work.vocab_size - 1, (batch_size, work.seq_len), generator=generator)
    labels = torch.randint(1, work.vocab_size, (batch_size, work.seq_len), generator=generator)
    ids = torch.randint(1, work.num_puzzle_identifiers, (batch_size,), generator=generator)
    batch = {
        "inputs": inputs.to(torch.int32),
        "labels": labels.to(torch.int64),
        "puzzle_identifiers": ids.to(torch.int32),
    }
    return {k: v.to(torch.device(device)) for k, v in batch.items()}


def segment_forward_backward(head: Any, batch: dict[str, Any], seed: int) -> Any:
    """The trainer's forward and backward of one ACT segment (`hrm.training.step.forward_backward`): training
    mode, target-Q pass included, halting draws from a seeded CPU generator as the trainer's. Returns the loss.
    """
    import torch

    from hrm.training.step import forward_backward

    head.train()
    generator = torch.Generator().manual_seed(seed)
    rows = batch["inputs"].shape[0]
    draws = head.draw_row_randomness(rows, generator)
    _, loss, _ = forward_backward(
        head, head.initial_carry(batch), batch, global_batch_size=rows, generator=generator, draws=draws
    )
    return loss


def _gradients(head: Any) -> dict[str, Any]:
    """Every gradient the step produced: parameters and any buffer that carries one (sparse embedding)."""
    grads = {}
    for name, tensor in [*head.named_parameters(), *head.named_buffers()]:
        if getattr(tensor, "grad", None) is not None:
            grads[name] = tensor.grad.detach().float().cpu().clone()
    return grads


def seeded_gradients(
    work: Workload, device: str, dtype_name: str, seed: int, batch_size: int
) -> dict[str, Any]:
    import torch

    torch.manual_seed(seed)
    if device.startswith("cuda"):
        torch.cuda.manual_seed_all(seed)
    head = build_head(work, batch_size, device, dtype_name, seed)
    segment_forward_backward(head, random_batch(work, batch_size, device, seed), seed)
    return _gradients(head)


def non_finite_gradients(grads: dict[str, Any]) -> list[str]:
    """'name: k of n NaN/inf, first [values]' for each gradient that is not finite everywhere."""
    import torch

    found = []
    for name, grad in grads.items():
        bad = ~torch.isfinite(grad)
        if bad.any():
            first = grad[bad].flatten()[:3].tolist()
            found.append(f"{name}: {int(bad.sum())} of {grad.numel()} NaN/inf, first {first}")
    return found


def compare_gradients(first: dict[str, Any], second: dict[str, Any]) -> tuple[bool, float | None, list[str]]:
    """(bit-identical, max abs difference (None: different tensors), names that differ)."""
    import torch

    if first.keys() != second.keys():
        return False, None, sorted(set(first) ^ set(second))
    differing, worst = [], 0.0
    for name, grad in first.items():
        if not torch.equal(grad, second[name]):
            differing.append(name)
            worst = max(worst, float((grad - second[name]).abs().max()))
    return not differing, worst, differing


def check_determinism(
    config: RunConfig,
    device: str,
    quick: bool,
    step: Callable[[int], dict[str, Any]] | None = None,
) -> Check:
    """Two seeded forward+backward steps from scratch must give bit-identical gradients.

    `step(seed) -> {name: grad}` defaults to the configured model; tests pass their own to prove the check
    can fail.
    """

    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    # A CPU step at the paper's shapes takes minutes: cap the sequence there (CPU kernels do not switch
    # algorithm with the length); GPUs run the configured shapes.
    work = workload(config, quick, max_seq_len=None if device.startswith("cuda") else CPU_DETERMINISM_SEQ_LEN)
    batch_size = 2
    if step is None:

        def step(seed: int) -> dict[str, Any]:
            return seeded_gradients(work, device, dtype_name, seed, batch_size)

    # The trainer's settings (hrm.runtime.set_determinism), restored afterwards.
    from hrm.runtime import determinism_state, restore_determinism, set_determinism

    previous = determinism_state()
    set_determinism(config.deterministic, device)
    try:
        first, second = step(config.seed), step(config.seed)
    except Exception as err:  # the model itself failed: report it, do not hide it behind a traceback
        return Check(
            "determinism", FAIL, f"a training step failed: {type(err).__name__}: {err}", {"error": repr(err)}
        )
    finally:
        restore_determinism(previous)
    shape = "scaled-down copy of arch (--quick)" if work.scaled_down else "configured arch"
    if work.seq_len < config.seq_len and not work.scaled_down:
        shape += f" (sequence capped at {work.seq_len} off the GPU)"
    where = f"{shape}, seq {work.seq_len}, batch {batch_size}, {dtype_name}, {len(first)} gradient tensors"
    # Finite first: NaN != NaN, so NaN gradients would otherwise read as "nondeterministic".
    non_finite = non_finite_gradients(first) or non_finite_gradients(second)
    if non_finite:
        return Check(
            "determinism",
            FAIL,
            f"the training step gives non-finite gradients in {len(non_finite)} tensors "
            f"({'; '.join(non_finite[:3])}): the run would diverge at its first step ({where})",
            {"finite": False, "non_finite": non_finite[:10], "deterministic_setting": config.deterministic},
        )
    identical, worst, differing = compare_gradients(first, second)
    data = {
        "finite": True,
        "identical": identical,
        "max_abs_diff": worst,
        "differing": differing[:10],
        "deterministic_setting": config.deterministic,
        "scaled_down": work.scaled_down,
    }
    if not first:
        return Check("determinism", FAIL, f"the step produced no gradients ({where})", data)
    if identical:
        return Check("determinism", OK, f"two seeded steps give bit-identical gradients ({where})", data)
    how_much = f"max |diff| {worst:.2e}" if worst is not None else "different gradient tensors"
    message = f"gradients differ between two seeded steps ({how_much}, in {len(differing)} tensors)"
    if config.deterministic:
        return Check("determinism", FAIL, f"{message} although train.deterministic is true ({where})", data)
    return Check("determinism", WARN, f"{message}; train.deterministic is false ({where})", data)


# --------------------------------------------------------------------------------------------- memory


def device_memory_available(device: str) -> tuple[int | None, int | None, str]:
    """(free bytes, total bytes, what was read)."""
    import torch

    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return free, total, "torch.cuda.mem_get_info"
    if device == "mps":
        total = getattr(torch.mps, "recommended_max_memory", lambda: None)()
        return total, total, "torch.mps.recommended_max_memory"
    try:
        import psutil

        memory = psutil.virtual_memory()
        return memory.available, memory.total, "available RAM (psutil)"
    except ImportError:
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
        free = pages * size if pages and size else None
        return free, free, "available RAM (sysconf)"


def _parameter_bytes(head: Any) -> tuple[int, int]:
    """(bytes of parameters, bytes of buffers) in the dtypes they are stored in."""
    params = sum(p.numel() * p.element_size() for p in head.parameters())
    buffers = sum(b.numel() * b.element_size() for b in head.buffers())
    return params, buffers


def sdpa_default_pick(device: str, dtype_name: str, heads: int, head_dim: int) -> str | None:
    """The kernel SDPA picks by itself on `device` for these sizes (flash, mem_efficient, cudnn, math)."""
    import torch

    query = torch.zeros(1, heads, 8, head_dim, device=torch.device(device), dtype=getattr(torch, dtype_name))
    try:  # a private but long-standing helper of the SDPA dispatcher
        chosen = int(torch._fused_sdp_choice(query, query, query))
    except (AttributeError, RuntimeError, TypeError):
        return None
    return {int(b.value): n for n, b in _backend_names().items()}.get(chosen)


def saved_step_bytes(
    work: Workload,
    device: str,
    dtype_name: str,
    batch_size: int,
    seed: int,
    fused_attention: bool,
    checkpointing: bool = False,
) -> tuple[int, int]:
    """(bytes a training step holds at its peak, parameter bytes), counted from what autograd saves.

    Held = parameters + buffers + gradients (one per parameter) + every tensor autograd saves for backward,
    each storage once (views share it), parameters not twice. On "meta" nothing is computed (seconds at the
    paper's shapes) and SDPA runs its math decomposition, which saves the heads x seq x seq attention matrix;
    with `fused_attention` (the kernel the real device picks is flash / mem-efficient / cuDNN) that matrix is
    counted as the fused kernel's output and logsumexp instead. On the CPU the meta count per example is
    within ~15% of the same count on a real step (tests/test_doctor.py). Transient workspace is not counted;
    MEMORY_HEADROOM leaves room for it.
    """
    import torch

    from hrm.training.loop import set_activation_checkpointing

    head = build_head(work, batch_size, device, dtype_name, seed)
    set_activation_checkpointing(head, checkpointing)  # saved: each block's input, not its insides
    params_bytes, buffer_bytes = _parameter_bytes(head)
    on_meta = torch.device(device).type == "meta"

    def storage_key(tensor: Any) -> int:
        if on_meta:  # meta storages have no address: key by the tensor a view was taken from
            return id(tensor._base if tensor._base is not None else tensor)
        return tensor.untyped_storage().data_ptr()

    owned = {storage_key(t) for t in [*head.parameters(), *head.buffers()]}
    saved: dict[int, tuple[int, tuple[int, ...]]] = {}

    def pack(tensor: Any) -> Any:
        key = storage_key(tensor)
        if key not in owned:
            base = tensor._base if tensor._base is not None else tensor
            saved[key] = (base.untyped_storage().nbytes(), tuple(base.shape))
        return tensor

    batch = random_batch(work, batch_size, device, seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        segment_forward_backward(head, batch, seed)

    total_len = head.config.total_len
    head_dim = head.config.hidden_size // head.config.num_heads
    element = torch.empty((), dtype=head.config.forward_dtype).element_size()
    activations = 0
    for nbytes, shape in saved.values():
        if fused_attention and on_meta and len(shape) >= 2 and shape[-1] == shape[-2] == total_len:
            rows = math.prod(shape[:-1])  # batch x heads x queries
            activations += rows * head_dim * element + rows * 4  # fused output + fp32 logsumexp
        else:
            activations += nbytes
    return params_bytes + buffer_bytes + params_bytes + activations, params_bytes


def measured_trainer_step(config: RunConfig, work: Workload, device: str, dtype_name: str) -> Any:
    """Peak memory of the trainer's own step (`hrm.training.step.train_step`, both optimizers) on CUDA at
    1 and 2 rows, as the trainer's memory plan measures it (`hrm.training.memory.measure_cuda_step`)."""
    import torch

    from hrm.training.loop import TrainConfig, build_optimizers, set_activation_checkpointing
    from hrm.training.memory import measure_cuda_step
    from hrm.training.step import TrainState

    train = TrainConfig.from_params(config.train)

    def make_state(rows: int) -> Any:
        head = build_head(work, rows, device, dtype_name, config.seed)
        set_activation_checkpointing(head, train.activation_checkpointing)
        head.train()
        optimizers, base_lrs = build_optimizers(head, train)
        return TrainState(head, head, optimizers, base_lrs, torch.Generator().manual_seed(config.seed))

    batch = random_batch(work, 2, device, config.seed)
    return measure_cuda_step(make_state, batch, torch.device(device), config.global_batch_size)


def check_memory(config: RunConfig, device: str, quick: bool) -> Check:
    """Training memory for the configured per-device batch, and the largest batch that fits here.

    A step is sized at batch 1 and 2 and extrapolated linearly (memory is affine in the batch).
    """
    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    work = workload(config, quick=False)  # always the configured shapes
    small = (1, 2)
    try:
        measured = None
        if device.startswith("cuda") and not quick:
            measured = measured_trainer_step(config, work, device, dtype_name)
            method = measured.method + " (optimizer state included)"
        else:
            hidden = int(config.arch.get("hidden_size", 512))
            heads = int(config.arch.get("num_heads", 8))
            pick = sdpa_default_pick(device, dtype_name, heads, hidden // heads)
            fused = pick not in (None, "math")
            recompute = config.train.get("activation_checkpointing") is True
            sized = [
                saved_step_bytes(work, "meta", dtype_name, b, config.seed, fused, recompute) for b in small
            ]
            method = (
                f"traced on the meta device (no compute): params + grads + autograd-saved tensors, "
                f"attention as {device}'s SDPA pick ({pick or 'unknown'}); transient workspace not counted"
            )
    except Exception as err:  # the model itself failed: report it
        return Check(
            "memory",
            FAIL,
            f"could not size a training step: {type(err).__name__}: {err}",
            {"error": repr(err)},
        )
    if measured is not None:
        per_example, fixed = measured.per_example, measured.fixed
    else:
        (first, params_bytes), (second, _) = sized
        per_example = second - first
        fixed = first - per_example + ADAM_STATE_COPIES * params_bytes
        method += "; + AdamATan2 state (2 x params, analytic); linear in the batch"
    free, total, memory_source = device_memory_available(device)
    batch = config.per_device_batch
    needed = fixed + per_example * batch
    data = {
        "method": method,
        "fixed_bytes": fixed,
        "per_example_bytes": per_example,
        "batch": batch,
        "global_batch_size": config.global_batch_size,
        "world_size": config.world_size,
        "needed_bytes": needed,
        "free_bytes": free,
        "total_bytes": total,
        "memory_source": memory_source,
        "seq_len": config.seq_len,
        "seq_len_source": config.seq_len_source,
        "dtype": dtype_name,
        "headroom": MEMORY_HEADROOM,
    }
    shape = (
        f"batch {batch}/device (global {config.global_batch_size} over {config.world_size}), "
        f"seq {config.seq_len} ({config.seq_len_source}), {dtype_name}"
    )
    if per_example <= 0:
        return Check(
            "memory",
            WARN,
            f"{shape}: memory did not grow with the batch ({method}); cannot extrapolate",
            data,
        )
    if free is None:
        return Check("memory", WARN, f"{shape}: needs ~{_gib(needed)}; free memory unknown ({method})", data)
    budget = free * MEMORY_HEADROOM
    largest = int((budget - fixed) // per_example) if budget > fixed else 0
    data["largest_batch"] = largest
    # Micro-batching (train.micro_batch_size): only a micro-batch's activations at once, plus the whole
    # batch's ACT carry.
    from hrm.training.memory import StepMemory, carry_bytes_per_row, largest_fitting

    carry_row = carry_bytes_per_row(
        build_head(work, 1, "meta", dtype_name, config.seed), random_batch(work, 1, "meta", config.seed)
    )
    step_memory = StepMemory(fixed, per_example, carry_row, method)
    largest_micro = largest_fitting(batch, step_memory, int(budget))
    micro = config.micro_batch_size or largest_micro
    data.update(largest_micro_batch=largest_micro, micro_batch=micro, carry_bytes_per_row=carry_row)
    detail = (
        f"{shape}: needs ~{_gib(needed)} in one batch ({_gib(fixed)} fixed + {_gib(per_example)} per example); "
        f"{_gib(free)} free ({memory_source}); largest batch that fits ~{largest} per device"
    )
    if largest_micro and needed > budget:
        detail += (
            f"; runs as micro-batches of {micro} x {batch // micro} accumulation "
            f"(~{_gib(step_memory.peak(batch, micro))} with the ACT carry of {batch} rows)"
        )
    detail += f". Method: {method}"
    if largest_micro == 0:
        hint = f"; lower train.global_batch_size to <= {largest * config.world_size} or use more devices"
        return Check("memory", FAIL, f"DOES NOT FIT even in micro-batches of 1: {detail}{hint}", data)
    if config.micro_batch_size and config.micro_batch_size > largest_micro:
        return Check(
            "memory",
            FAIL,
            f"DOES NOT FIT: train.micro_batch_size {config.micro_batch_size} is above the largest that fits, "
            f"{largest_micro}: {detail}",
            data,
        )
    return Check("memory", OK, detail, data)


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**27 else f"{value / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------- GPU plans

# One example GPU per memory size and its dense bf16 tensor-core peak (fp32 accumulate), from the vendors'
# data sheets. Assumptions for the time estimate only; the memory plan does not depend on them.
GPU_TIERS = (
    (8, "RTX 3070 Ti", 43.5e12),
    (12, "RTX 4070", 58.3e12),
    (16, "RTX 4080", 97.5e12),
    (24, "RTX 4090", 165.2e12),
    (40, "A100 40GB", 312e12),
    (48, "L40S", 362e12),
    (80, "H100 SXM", 989e12),
    (141, "H200", 989e12),
)
ASSUMED_MFU = 0.30  # model FLOPs utilisation assumed for the estimate (not measured yet: bench/gpu_check.py)


def step_flops(arch: dict[str, Any], seq_len: int, vocab_size: int, rows: int) -> tuple[float, str]:
    """FLOPs of one training step (one ACT segment) over `rows` rows, counted analytically, and the formula."""
    from hrm.models.layers import swiglu_width

    h = int(arch.get("hidden_size", 512))
    hc, lc = int(arch.get("H_cycles", 2)), int(arch.get("L_cycles", 2))
    hl, ll = int(arch.get("H_layers", 4)), int(arch.get("L_layers", 4))
    emb = int(arch.get("puzzle_emb_ndim", h))
    tokens = seq_len + (-(emb // -h) if emb > 0 else 0)
    inner = swiglu_width(h, float(arch.get("expansion", 4)))
    block = (
        2 * (4 * h * h + 3 * h * inner) + 4 * tokens * h
    )  # per token: matmuls + attention scores and values
    forward_blocks = hc * (lc * ll + hl)  # one segment: every L and H update
    segment_blocks = 2 * forward_blocks + 2 * (
        ll + hl
    )  # + the target-Q forward + backward of the last L and H
    lm_head = 3 * 2 * h * vocab_size  # forward + backward
    total = rows * tokens * (segment_blocks * block + lm_head)
    formula = (
        "rows x tokens x [(2 x H_cycles x (L_cycles x L_layers + H_layers) + 2 x (L_layers + H_layers)) x "
        "(2 x (4h^2 + 3 h inner) + 4 tokens h) + 6 h vocab]"
    )
    return float(total), formula


def planned_step_count(config: RunConfig) -> tuple[int, str]:
    """train's planned steps, from the converted data if present, else from generate.train_bases (of the
    resolved params: a profile's or --set's train_bases counts)."""
    from types import SimpleNamespace

    from hrm.training.data import DatasetMetadata, planned_steps

    params = config.params
    epochs = config.epochs
    hrm_dir = params.get("paths", {}).get("hrm")
    metadata_file = (
        config.params_path.parent / Path(str(hrm_dir)) / "train" / "dataset.json" if hrm_dir else None
    )
    if config.data_is_current and metadata_file is not None and metadata_file.is_file():
        meta = DatasetMetadata.from_file(metadata_file)
    else:  # one group per base, one example per puzzle (docs/design.md)
        bases = int(params.get("generate", {}).get("train_bases", 0))
        meta = SimpleNamespace(total_groups=bases, mean_puzzle_examples=1.0)
    steps = planned_steps(meta, epochs, config.global_batch_size)
    return steps, f"epochs {epochs} x {meta.total_groups} groups"


def check_gpu_plans(config: RunConfig) -> Check:
    """The memory plan and an estimated duration of the configured run on GPUs of 8 to 141 GiB."""
    from hrm.runtime import dtype_name
    from hrm.training.memory import MEMORY_HEADROOM, StepMemory, carry_bytes_per_row, gib, largest_fitting

    gpu_dtype = dtype_name(config.forward_dtype, "cuda")
    work = workload(config, quick=False)
    try:
        recompute = config.train.get("activation_checkpointing") is True
        sized = [saved_step_bytes(work, "meta", gpu_dtype, b, config.seed, True, recompute) for b in (1, 2)]
        head = build_head(work, 1, "meta", gpu_dtype, config.seed)
        carry_row = carry_bytes_per_row(head, random_batch(work, 1, "meta", config.seed))
    except Exception as err:  # the model itself failed: report it
        return Check(
            "gpu_plans", FAIL, f"could not size a step: {type(err).__name__}: {err}", {"error": repr(err)}
        )
    (first, params_bytes), (second, _) = sized
    per_example = max(second - first, 1)
    memory = StepMemory(
        fixed=first - per_example + ADAM_STATE_COPIES * params_bytes,
        per_example=per_example,
        carry_per_row=carry_row,
        method="meta trace",
    )
    steps, steps_source = planned_step_count(config)
    flops, formula = step_flops(work.arch, work.seq_len, work.vocab_size, config.global_batch_size)
    share = config.per_device_batch
    rows, lines = [], []
    for size, example, peak in GPU_TIERS:
        micro = largest_fitting(share, memory, int(size * 2**30 * MEMORY_HEADROOM))
        hours = steps * flops / (config.world_size * peak * ASSUMED_MFU) / 3600
        row = {"gib": size, "example_gpu": example, "peak_flops": peak, "micro_batch": micro, "hours": hours}
        if micro:
            row.update(accumulation=share // micro, peak_bytes=memory.peak(share, micro))
            lines.append(
                f"{size:>3} GiB ({example}): micro-batch {micro} x {share // micro} accumulation, "
                f"est. peak {gib(memory.peak(share, micro))}, est. {hours:,.0f} h"
            )
        else:
            lines.append(f"{size:>3} GiB ({example}): does not fit (even 1 row with the carry of {share})")
        rows.append(row)
    detail = (
        f"ESTIMATE, not measured: {config.world_size} x GPU, batch {share}/GPU, {gpu_dtype}, {steps:,} planned "
        f"steps ({steps_source}); memory traced on meta (+ Adam state + ACT carry of {share} rows), budget "
        f"{MEMORY_HEADROOM:.0%} of the GPU; time = steps x FLOPs/step / (GPUs x peak x MFU {ASSUMED_MFU:.0%}), "
        f"FLOPs/step {flops:.3g} = {formula}\n" + "\n".join(lines)
    )
    data = {"rows": rows, "flops_per_step": flops, "formula": formula, "mfu": ASSUMED_MFU, "steps": steps}
    return Check("gpu_plans", OK, detail, data)


# ------------------------------------------------------------------------------------------------- main


def run_doctor(config: RunConfig, quick: bool = False) -> Report:
    """All checks in order; checks that need a device are skipped when the device check failed."""
    if config.deterministic:
        # cuBLAS reads this once, when CUDA starts: it must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    device_check, device = check_device(config)
    checks = [check_environment(device), device_check]
    if device is None:
        for name in (
            "compile",
            "sdpa_backends",
            "sdpa_numerics",
            "bf16",
            "determinism",
            "memory",
            "gpu_plans",
        ):
            checks.append(Check(name, SKIP, "no usable device"))
        return Report(checks)
    checks.append(check_compile(config, device))
    checks.extend(check_sdpa(config, device, quick))
    checks.append(check_bf16(config, device))
    checks.append(check_determinism(config, device, quick))
    checks.append(check_memory(config, device, quick))
    checks.append(check_gpu_plans(config))
    return Report(checks)


STATUS_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


def print_report(report: Report, config: RunConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False)
    table = Table(title=f"hrm doctor: {config.params_path.as_posix()}", show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        style = STATUS_STYLE.get(check.status, "")
        table.add_row(check.name, f"[{style}]{check.status.upper()}[/]", check.detail)
    console.print(table)
    failed = [c.name for c in report.checks if c.status == FAIL]
    if failed:
        console.print(f"[bold red]NOT READY[/]: {', '.join(failed)} failed; see the details above.")
    else:
        console.print("[green]READY[/]: this machine can run the configured training.")


def main(
    params_path: str | Path = "params.yaml",
    device: str | None = None,
    as_json: bool = False,
    quick: bool = False,
    overrides: Iterable[str] = (),
    profile: str | None = None,
    world_size: int | None = None,
) -> int:
    """The `hrm doctor` command; returns the exit code."""
    import json

    try:
        config = load_run_config(params_path, device, overrides, profile, world_size)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = run_doctor(config, quick=quick)
    if as_json:
        payload = report.to_dict()
        payload["params"] = config.params_path.as_posix()
        payload["quick"] = quick
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        print_report(report, config)
    return 0 if report.ok else 1
