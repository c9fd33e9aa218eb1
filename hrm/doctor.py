"""`hrm doctor`: check this machine against the configured run before spending hours on it.

Each check is ok / warn / fail / skip; a fail (CUDA requested but absent, SDPA wrong, nondeterministic gradients
under `deterministic: true`, a batch that does not fit) exits 1. The checks run real kernels here and ask the
trainer instead of copying it: TrainConfig, DatasetMetadata, build_model, its step and memory plan, models.flops
(estimates: hrm.planning). The output says which method gave each figure.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import timeit
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hrm import planning, runtime
from hrm.config import load_params, run_params
from hrm.io import UserError
from hrm.planning import ASSUMED_MFU, format_duration, gpu_plans
from hrm.rules import check_rules
from hrm.runtime import CUBLAS_DETERMINISTIC_WORKSPACE, compile_tiny_function
from hrm.sdpa import nan_max
from hrm.training.data import DatasetMetadata, planned_steps
from hrm.training.memory import MEMORY_HEADROOM, MemoryPlan, gib, plan_here, traced_step_memory
from hrm.training.setup import TrainConfig, fixed_micro_batch
from hrm.training.trace import (
    Workload,
    build,
    model_config,
    random_batch,
    segment_forward_backward,
)

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

# Max abs difference allowed between SDPA and a float64 plain attention on the same (rounded) inputs.
# About two units in the last place of an O(1) output for each dtype: a kernel bug is orders larger.
SDPA_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}
# Gradients (dq, dk, dv) against the float64 ones: max abs difference relative to the largest gradient.
SDPA_GRAD_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 4e-2}
CPU_DETERMINISM_SEQ_LEN = 256
SLOW_RUN_S = 86400  # a run longer than a day off CUDA: the time check warns and points at the GPU table
IMPRACTICAL_RUN_S = 365.25 * 86400  # a year or more here: NOT READY (exit 1), whatever fits in memory
DETERMINISM_BATCH = 2
QUICK_ARCH = dict(hidden_size=64, num_heads=2, expansion=2.0, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1)
QUICK_SEQ_LEN = 16
COMPILER_HINT = (
    "torch.compile builds C code at run time: it needs a C compiler and the Python headers (Debian/Ubuntu: "
    "apt-get install g++ python3-dev; the Docker image has them), or set train.compile: false"
)


@dataclass
class Finding:
    """What one check found: one line of the report; `data` carries the figures for `--json`."""

    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """What the configured run needs: params.yaml (plus profile and overrides) as the trainer reads it."""

    params_path: Path
    params: dict[str, Any]  # the whole resolved params (profile and --set applied)
    train: TrainConfig
    device_request: str
    world_size: int
    micro_batch_size: int | None  # train.micro_batch_size; None = auto
    metadata: DatasetMetadata  # the converted data's, or what convert would write for these settings
    seq_len_source: str

    @property
    def arch(self) -> dict[str, Any]:
        return self.params["arch"]

    @property
    def forward_dtype(self) -> str:
        return str(self.arch.get("forward_dtype", "auto"))

    @property
    def deterministic(self) -> bool:
        return self.train.deterministic

    @property
    def seq_len(self) -> int:
        return self.metadata.seq_len

    @property
    def per_device_batch(self) -> int:
        return self.train.global_batch_size // self.world_size


@dataclass
class Report:
    checks: list[Finding]

    @property
    def ok(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


# ----------------------------------------------------------------------------------------------- config


def load_run_config(
    params_path: str | Path = "params.yaml",
    device: str | None = None,
    overrides: Iterable[str] = (),
    profile: str | None = None,
    world_size: int | None = None,
) -> RunConfig:
    """The settings of the configured run; UserError naming the file and key when one is missing or wrong."""
    from hrm.data.conversion.convert import metadata_for_settings

    params_path = Path(params_path)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1:
        raise UserError(f"--world-size must be >= 1, got {world_size}")
    on_disk = load_params(params_path)
    params = run_params(on_disk, profile, list(overrides), params_path.as_posix())
    # the trainer's own checks (hrm.rules.check_rules): the global batch splits over the processes, the
    # micro-batch divides a share, eval_interval divides epochs, the model's and the generator's rules
    check_rules(params, params_path.as_posix(), world_size)
    train = TrainConfig.from_params(params["train"])
    micro = fixed_micro_batch(train)
    # The converted data on disk is this run's only if made from the same data settings (a profile or --set
    # that changes them makes it another run's): else what convert would write for the generate settings.
    data_is_current = all(on_disk.get(key) == params.get(key) for key in ("generate", "convert", "paths"))
    metadata_file = params_path.parent / Path(params["paths"]["hrm"]) / "train" / "dataset.json"
    if data_is_current and metadata_file.is_file():
        metadata, source = DatasetMetadata.from_file(metadata_file), f"{metadata_file.as_posix()}: seq_len"
    else:
        metadata = DatasetMetadata(**metadata_for_settings(params["generate"]))
        source = "generate.rows x generate.cols (no converted data of these settings)"
    request = str(device or train.device)
    return RunConfig(params_path, params, train, request, world_size, micro, metadata, source)


# ----------------------------------------------------------------------------------------------- device


def check_environment(device: str | None) -> Finding:
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
        data.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}")
        data.update(gpu_memory_bytes=props.total_memory, cuda_runtime=torch.version.cuda)
        detail += f"; {props.name} (sm_{props.major}{props.minor}, {gib(props.total_memory)})"
    else:
        detail += f"; CPU {data['cpu_capability']}, {data['threads']} threads"
    return Finding("environment", OK, detail + f"; Python {data['python']}", data)


def visible_nvidia_gpu(dev: Path = Path("/dev"), proc: Path = Path("/proc/driver/nvidia")) -> str | None:
    """A device node or the driver's /proc entry showing an NVIDIA GPU handed to this machine, or None: lets a
    CPU-only torch say it cannot use the GPU it was given (`docker run --gpus`)."""
    nodes = sorted(dev.glob("nvidia[0-9]*"))
    if nodes:
        return nodes[0].as_posix()
    return (proc / "version").as_posix() if (proc / "version").exists() else None


def check_device(config: RunConfig) -> tuple[Finding, str | None]:
    import torch

    device, why = runtime.device_choice(config.device_request)
    gpu = visible_nvidia_gpu() if torch.version.cuda is None else None
    unusable = (
        f"; an NVIDIA GPU is visible ({gpu}) but torch {torch.__version__} is a CPU-only build and cannot use it:"
        " install a CUDA build of torch (Docker: the CUDA image, docs/docker.md)"
        if gpu
        else ""
    )
    if device is None:
        return Finding("device", FAIL, why + unusable, {"requested": config.device_request}), None
    detail = f"{device} ({why})"
    auto_cpu = device == "cpu" and config.device_request == "auto"
    if auto_cpu:
        detail += "; the paper profile needs a GPU, the CPU suits the quick profile"
    data = {"requested": config.device_request, "device": device}
    return Finding("device", WARN if auto_cpu or gpu else OK, detail + unusable, data), device


def check_compile(config: RunConfig, device: str) -> Finding:
    """With train.compile: true, compile and run a tiny function here: importing Triton is not enough."""
    if not config.train.compile:
        return Finding(
            "compile", OK, "train.compile is false: eager mode, no Triton needed", {"compile": False}
        )
    data = {"compile": True, "triton": importlib.util.find_spec("triton") is not None}
    if device.startswith("cuda") and not data["triton"]:
        detail = "train.compile is true but Triton is not installed (on Windows: set train.compile: false)"
        return Finding("compile", FAIL, detail, data)
    try:
        seconds = compile_tiny_function(device)
    except Exception as err:  # any failure of the tool chain: the trainer's compile would fail the same way
        error = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
        detail = f"train.compile is true but torch.compile failed on {device}: {error}. {COMPILER_HINT}"
        return Finding("compile", FAIL, detail, data | {"error": error})
    detail = f"train.compile is true: a compiled function ran on {device} in {seconds:.1f} s"
    return Finding(
        "compile", OK, f"{detail} (Triton installed: {data['triton']})", data | {"seconds": seconds}
    )


# ------------------------------------------------------------------------------------------------- SDPA


def check_sdpa(config: RunConfig, device: str, quick: bool) -> list[Finding]:
    """Which SDPA kernels run here for the configured dtype and head size, and are their outputs right?"""
    from hrm import sdpa

    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    model = model_config(workload(config, quick=False), dtype_name)
    seq = 193 if quick else config.seq_len + 1  # odd on purpose: not a multiple of any kernel's block
    head_dim = model.hidden_size // model.num_heads
    got = sdpa.measure(device, dtype_name, model.num_heads, head_dim, seq)
    ran = {name: diff is not None for name, diff in got.runs.items()}
    available = [name for name in ran if ran[name]]
    if device == "cpu":
        picked = got.default_pick or ("flash" if "flash" in available else "math")
        picked = "flash (the CPU flash kernel)" if picked == "flash" else picked
        detail = f"CPU: SDPA picks {picked}; kernels that run here: {', '.join(available)}"
    else:
        shown = [
            f"{n}={'on' if got.enabled.get(n, True) else 'off'}{'' if ran[n] else ' (n/a)'}" for n in ran
        ]
        detail = f"{device}: " + ", ".join(shown) + f"; default pick: {got.default_pick or 'unknown'}"
    data = {"enabled_flags": got.enabled, "runs": ran, "default": got.default_pick, "errors": got.errors}
    data |= {"dtype": dtype_name, "head_dim": head_dim}
    backends = Finding(
        "sdpa_backends", OK if available else FAIL, f"{detail} [{dtype_name}, head_dim {head_dim}]", data
    )
    tolerance, grad_tolerance = (
        SDPA_TOLERANCE.get(dtype_name, 1e-4),
        SDPA_GRAD_TOLERANCE.get(dtype_name, 1e-4),
    )
    diffs = {n: d for n, d in got.runs.items() if d is not None}
    grads = {n: d for n, d in got.grad_runs.items() if d is not None}
    # `not d <= tolerance`: a NaN difference is out of tolerance (every comparison with NaN is false)
    bad = [n for n, d in diffs.items() if not d <= tolerance] + [
        f"{n} backward" for n, d in grads.items() if not d <= grad_tolerance
    ]
    bad += ["default"] if not got.default_diff <= tolerance else []
    worst, worst_grad = nan_max([got.default_diff, *diffs.values()]), nan_max(grads.values())
    grad_summary = (
        f"; gradients rel. {worst_grad:.1e} (tolerance {grad_tolerance:.0e})"
        if worst_grad is not None
        else ""
    )
    per_kernel = ", ".join(
        f"{n} {d:.1e}" + (f" (grad {grads[n]:.1e})" if n in grads else "") for n, d in diffs.items()
    )
    detail = (
        f"max |SDPA - plain attention| = {worst:.2e} (tolerance {tolerance:.0e} for {dtype_name}, "
        f"seq {seq}){grad_summary}: {per_kernel}" + (f"; OUT OF TOLERANCE: {', '.join(bad)}" if bad else "")
    )
    data = dict(max_abs_diff=worst, per_backend=got.runs, default_diff=got.default_diff, tolerance=tolerance)
    data |= dict(grad_max_rel_diff=worst_grad, grad_per_backend=got.grad_runs, grad_tolerance=grad_tolerance)
    return [
        backends,
        Finding("sdpa_numerics", FAIL if bad else OK, detail, data | dict(seq_len=seq, dtype=dtype_name)),
    ]


def bf16_matmul_slowdown() -> float:
    """Time of a SwiGLU-sized bf16 matmul (64 tokens x 512 -> 1536) over fp32 on the CPU, best of 2 after a
    warm-up (small sizes are dominated by call overhead and hide the gap)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens, weight = torch.randn(64, 512, generator=generator), torch.randn(512, 1536, generator=generator)

    def best_time(dtype: Any) -> float:
        x, w = tokens.to(dtype), weight.to(dtype)
        x @ w  # warm-up
        return min(timeit.repeat(lambda: x @ w, number=1, repeat=2))

    fp32 = best_time(torch.float32)
    return best_time(torch.bfloat16) / max(fp32, 1e-12)


def check_bf16(config: RunConfig, device: str) -> Finding:
    """bf16 works on Ampere+ GPUs; on the CPU it runs but is usually slower than fp32: measure it."""
    import torch

    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    if device.startswith("cuda"):
        try:  # in hardware (compute capability 8.0+): `is_bf16_supported()` alone also counts emulation
            supported = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch without the keyword (it came in 2.4): the same rule, by hand
            supported = torch.cuda.get_device_capability(torch.device(device))[0] >= 8
        data = {"supported": supported, "forward_dtype": dtype_name}
        if dtype_name == "bfloat16" and not supported:
            detail = (
                "arch.forward_dtype is bfloat16 (auto picks it on CUDA) but this GPU has no bf16 in hardware "
                "(compute capability below 8.0; torch would emulate it, slowly): set arch.forward_dtype: float32"
            )
            return Finding("bf16", FAIL, detail, data)
        return Finding("bf16", OK, f"bf16 in hardware: {supported}; forward dtype {dtype_name}", data)
    ratio = bf16_matmul_slowdown()
    detail = f"{device}: bf16 runs, matmul {ratio:.1f}x the time of fp32 here; forward dtype {dtype_name}"
    if dtype_name == "bfloat16":
        detail += "; recommend arch.forward_dtype: float32 (or auto) off CUDA"
    else:
        detail += " (fp32, recommended off CUDA)"
    figures = {"supported": True, "bf16_over_fp32_time": ratio, "forward_dtype": dtype_name}
    return Finding("bf16", WARN if dtype_name == "bfloat16" else OK, detail, figures)


# ----------------------------------------------------------------------------------------- model steps


def workload(config: RunConfig, quick: bool, max_seq_len: int | None = None) -> Workload:
    """The configured shapes; `quick` scales the model down, `max_seq_len` caps the sequence."""
    work = Workload(dict(config.arch), config.metadata)
    if quick:
        arch = dict(config.arch, **QUICK_ARCH, halt_max_steps=2)
        if model_config(work, "float32").puzzle_emb_ndim > 0:  # the model's own default counts
            arch["puzzle_emb_ndim"] = QUICK_ARCH["hidden_size"]
        work = Workload(arch, config.metadata, scaled_down=True).with_seq_len(QUICK_SEQ_LEN)
    return work.with_seq_len(min(work.seq_len, max_seq_len)) if max_seq_len else work


def seeded_gradients(work: Workload, device: str, dtype_name: str, seed: int) -> dict[str, Any]:
    """Every gradient of one seeded step from scratch: parameters and any buffer that carries one."""
    import torch

    torch.manual_seed(seed)
    if device.startswith("cuda"):
        torch.cuda.manual_seed_all(seed)
    head = build(work, DETERMINISM_BATCH, device, dtype_name, seed)
    segment_forward_backward(head, random_batch(work, DETERMINISM_BATCH, device, seed), seed)
    tensors = [*head.named_parameters(), *head.named_buffers()]
    return {
        n: t.grad.detach().float().cpu().clone() for n, t in tensors if getattr(t, "grad", None) is not None
    }


def non_finite_gradients(grads: dict[str, Any]) -> list[str]:
    """'name: k of n NaN/inf, first [values]' for each gradient that is not finite everywhere."""
    import torch

    bad = {name: ~torch.isfinite(grad) for name, grad in grads.items()}
    return [
        f"{n}: {int(b.sum())} of {b.numel()} NaN/inf, first {grads[n][b][:3].tolist()}"
        for n, b in bad.items()
        if b.any()
    ]


@contextmanager
def trainer_settings(config: RunConfig, device: str) -> Iterator[None]:
    """The trainer's determinism and CPU thread settings (hrm.runtime, as train sets them), restored after."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    runtime.set_determinism(config.deterministic, device)
    runtime.set_cpu_threads(config.train.threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        torch.set_num_threads(threads)


def check_determinism(
    config: RunConfig, device: str, quick: bool, step: Callable[[int], dict[str, Any]] | None = None
) -> Finding:
    """Two seeded forward+backward steps from scratch must give finite, bit-identical gradients. `step(seed) ->
    {name: grad}` defaults to the configured model; tests pass their own to prove the check can fail."""
    import torch

    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    # A CPU step at the paper's shapes takes minutes: cap the sequence there (CPU kernels do not switch
    # algorithm with the length); GPUs run the configured shapes.
    work = workload(config, quick, max_seq_len=None if device.startswith("cuda") else CPU_DETERMINISM_SEQ_LEN)
    step = step or (lambda seed: seeded_gradients(work, device, dtype_name, seed))
    try:
        with trainer_settings(config, device):
            first, second = step(config.train.seed), step(config.train.seed)
    except Exception as err:  # the model itself failed: report it, do not hide it behind a traceback
        failed = f"a training step failed: {type(err).__name__}: {err}"
        return Finding("determinism", FAIL, failed, {"error": repr(err)})
    shape = "scaled-down copy of arch (--quick)" if work.scaled_down else "configured arch"
    if work.seq_len < config.seq_len and not work.scaled_down:
        shape += f" (sequence capped at {work.seq_len} off the GPU)"
    where = (
        f"{shape}, seq {work.seq_len}, batch {DETERMINISM_BATCH}, {dtype_name}, {len(first)} gradient tensors"
    )
    data: dict[str, Any] = {"deterministic_setting": config.deterministic}
    # Finite first: NaN != NaN, so NaN gradients would otherwise read as "nondeterministic".
    non_finite = non_finite_gradients(first) or non_finite_gradients(second)
    if non_finite:
        detail = (
            f"the training step gives non-finite gradients in {len(non_finite)} tensors "
            f"({'; '.join(non_finite[:3])}): the run would diverge at its first step ({where})"
        )
        return Finding("determinism", FAIL, detail, data | {"finite": False, "non_finite": non_finite[:10]})
    if first.keys() != second.keys():
        worst, differing = None, sorted(set(first) ^ set(second))
    else:
        differing = [name for name, grad in first.items() if not torch.equal(grad, second[name])]
        worst = max((float((first[n] - second[n]).abs().max()) for n in differing), default=0.0)
    data |= {"finite": True, "identical": not differing, "max_abs_diff": worst, "differing": differing[:10]}
    data["scaled_down"] = work.scaled_down
    if not first:
        return Finding("determinism", FAIL, f"the step produced no gradients ({where})", data)
    if not differing:
        return Finding("determinism", OK, f"two seeded steps give bit-identical gradients ({where})", data)
    how_much = f"max |diff| {worst:.2e}" if worst is not None else "different gradient tensors"
    message = f"gradients differ between two seeded steps ({how_much}, in {len(differing)} tensors)"
    if config.deterministic:
        return Finding("determinism", FAIL, f"{message} although train.deterministic is true ({where})", data)
    return Finding("determinism", WARN, f"{message}; train.deterministic is false ({where})", data)


# --------------------------------------------------------------------------------------------- memory


def check_memory(config: RunConfig, device: str, quick: bool) -> tuple[Finding, MemoryPlan | None]:
    """The trainer's memory plan here (hrm.training.memory.plan_micro_batch, the very function train calls: its
    step measured at 1 and 2 rows, or traced where nothing can be measured) and the plan itself (None: refused);
    --quick gives the same planner (`plan_here`) the step traced on meta instead of running it (an estimate).
    The fit, the micro-batch and the refusal's words are the plan's; the doctor only shows them."""
    dtype_name = runtime.dtype_name(config.forward_dtype, device)
    batch, global_batch, world = config.per_device_batch, config.train.global_batch_size, config.world_size
    micro, seq_len, source = config.micro_batch_size, config.seq_len, config.seq_len_source
    shape = (
        f"batch {batch}/device (global {global_batch} over {world}), seq {seq_len} ({source}), {dtype_name}"
    )
    data: dict[str, Any] = dict(
        batch=batch, global_batch_size=global_batch, world_size=world, dtype=dtype_name
    )
    data |= dict(seq_len=seq_len, seq_len_source=source, headroom=MEMORY_HEADROOM)
    work = workload(config, quick=False)
    try:
        if quick:
            traced = traced_step_memory(work, config.train, dtype_name, device)
            plan = plan_here(traced, global_batch, world, micro, device)
        else:
            plan = planning.trainer_plan(work, config.train, world, device, micro)
    except UserError as err:  # the trainer's plan refuses the batch at its start: it would here too
        data["summary"] = str(err)
        return Finding("memory", FAIL, f"DOES NOT FIT: {shape}: {err}", data), None
    except Exception as err:  # the model itself failed: report it
        failed = f"could not size a training step: {type(err).__name__}: {err}"
        return Finding("memory", FAIL, failed, {"error": repr(err)}), None
    data |= plan_figures(plan)
    whose = "ESTIMATE (--quick: traced, not the trainer's measured step)" if quick else "the trainer's plan"
    return Finding("memory", OK, f"{shape}: {whose}: {plan.describe()}", data), plan


def plan_figures(plan: MemoryPlan) -> dict[str, Any]:
    """The plan's numbers for --json."""
    figures: dict[str, Any] = dict(micro_batch=plan.micro_batch, accumulation=plan.accumulation)
    figures |= dict(peak_bytes=plan.peak_bytes, free_bytes=plan.free_bytes, total_bytes=plan.total_bytes)
    figures |= dict(budget_bytes=plan.budget_bytes, memory_source=plan.memory_source, plan=plan.describe())
    if plan.memory is not None:
        step = plan.memory
        figures |= dict(method=step.method, fixed_bytes=step.fixed, per_example_bytes=step.per_example)
        figures |= dict(carry_bytes_per_row=step.carry_per_row, probe_step_seconds=list(step.step_seconds))
    return figures


# ------------------------------------------------------------------------------------------- time here


def check_time_here(config: RunConfig, device: str, plan: MemoryPlan | None, quick: bool) -> Finding:
    """How long the configured run takes on this machine: planned steps x accumulation x the seconds of one
    micro-batch, timed with the trainer's step at the run's shapes (hrm.planning.time_micro_batch); --quick
    divides the FLOPs by this machine's matmul rate instead (a lower bound, no step run)."""
    from hrm.models.flops import segment_flops

    if plan is None:
        return Finding("time_here", SKIP, "no memory plan: the run cannot start here")
    steps, steps_source = planned_step_count(config)
    work, dtype_name = workload(config, quick=False), runtime.dtype_name(config.forward_dtype, device)
    micro, accumulation = plan.micro_batch, plan.accumulation
    try:
        if quick:
            row_flops = segment_flops(model_config(work, dtype_name)).total
            rate = planning.matmul_rate(device, dtype_name, model_config(work, dtype_name).hidden_size)
            seconds = row_flops * micro / rate
            how = f"ESTIMATE (--quick, no step run): FLOPs at this machine's matmul rate {rate:.3g} FLOP/s, a lower bound"
            about = "at least"
        else:
            timing = planning.time_micro_batch(work, config.train, device, plan)
            seconds, how, about = timing.seconds, f"measured: {timing.how}", "about"
    except Exception as err:  # the model itself failed: report it
        return Finding(
            "time_here", FAIL, f"could not time a step: {type(err).__name__}: {err}", {"error": repr(err)}
        )
    total = steps * accumulation * seconds
    data = dict(seconds_per_micro_batch=seconds, steps=steps, accumulation=accumulation, total_seconds=total)
    data["summary"] = f"{about} {format_duration(total)} here"
    slow = total > SLOW_RUN_S and not device.startswith("cuda")
    detail = (
        f"{about} {format_duration(total)} here ({seconds:.3g} s per micro-batch of {micro} x {accumulation} "
        f"accumulation x {steps:,} planned steps, {steps_source}; {how})"
    )
    status = (FAIL if total >= IMPRACTICAL_RUN_S else WARN) if slow else OK
    return Finding("time_here", status, detail + ("; use a GPU: see the table" if slow else ""), data)


# ------------------------------------------------------------------------------------------- GPU plans


def planned_step_count(config: RunConfig) -> tuple[int, str]:
    """train's planned steps for the resolved params' data (a profile's or --set's train_bases counts)."""
    steps = planned_steps(config.metadata, config.train.epochs, config.train.global_batch_size)
    return steps, f"epochs {config.train.epochs} x {config.metadata.total_groups} groups"


def check_gpu_plans(config: RunConfig) -> Finding:
    """The memory plan and estimated duration of the configured run on GPUs of 8 to 141 GiB (planning.gpu_plans:
    the trainer's plan per card, FLOPs from hrm.models.flops for the chosen arch)."""
    from hrm.models.flops import FORMULA, segment_flops

    gpu_dtype = runtime.dtype_name(config.forward_dtype, "cuda")
    work = workload(config, quick=False)
    try:
        memory = traced_step_memory(work, config.train, gpu_dtype, "gpu")
        row_flops = segment_flops(model_config(work, gpu_dtype)).total
    except Exception as err:  # the model itself failed: report it
        failed = f"could not size a step: {type(err).__name__}: {err}"
        return Finding("gpu_plans", FAIL, failed, {"error": repr(err)})
    steps, steps_source = planned_step_count(config)
    global_batch, share = config.train.global_batch_size, config.per_device_batch
    flops = row_flops * global_batch
    rows, lines = gpu_plans(memory, global_batch, config.world_size, steps * flops)
    detail = (
        f"ESTIMATE, not measured: {config.world_size} x GPU, batch {share}/GPU, {gpu_dtype}, {steps:,} planned "
        f"steps ({steps_source}); memory traced on meta (+ Adam state + ACT carry of {share} rows), budget "
        f"{MEMORY_HEADROOM:.0%} of the GPU; time = steps x FLOPs/step / (GPUs x peak x MFU {ASSUMED_MFU:.0%}), "
        f"FLOPs/step {flops:.3g} = global batch {global_batch} x hrm.models.flops ({FORMULA})\n"
        + "\n".join(lines)
    )
    data = {"rows": rows, "flops_per_step": flops, "formula": FORMULA, "mfu": ASSUMED_MFU, "steps": steps}
    return Finding("gpu_plans", OK, detail, data)


# ------------------------------------------------------------------------------------------------- main

CHECK_NAMES = (
    "compile",
    "sdpa_backends",
    "sdpa_numerics",
    "bf16",
    "determinism",
    "memory",
    "time_here",
    "gpu_plans",
)


def run_doctor(config: RunConfig, quick: bool = False) -> Report:
    """All checks in order; checks that need a device are skipped when the device check failed."""
    if config.deterministic:
        # cuBLAS reads this once, when CUDA starts: it must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    device_check, device = check_device(config)
    checks = [check_environment(device), device_check]
    if device is None:
        return Report(checks + [Finding(name, SKIP, "no usable device") for name in CHECK_NAMES])
    checks += [check_compile(config, device), *check_sdpa(config, device, quick), check_bf16(config, device)]
    checks.append(check_determinism(config, device, quick))
    with trainer_settings(config, device):  # the plan and the timed step run as train runs them
        memory, plan = check_memory(config, device, quick)
        checks += [memory, check_time_here(config, device, plan, quick)]
    return Report([*checks, check_gpu_plans(config)])


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
    console.print(verdict(report))


def verdict(report: Report) -> str:
    """The last line: READY with the time here, or NOT READY with each failed check's reason."""
    failed = [c for c in report.checks if c.status == FAIL]
    if failed:
        reasons = "; ".join(
            f"{c.name}: {c.data['summary']}" if "summary" in c.data else c.name for c in failed
        )
        return f"[bold red]NOT READY[/]: {reasons}; see the details above."
    time_here = next((c.data["summary"] for c in report.checks if "summary" in c.data), None)
    return "[green]READY[/]: this machine can run the configured training" + (
        f" ({time_here}; see time_here)." if time_here else "."
    )


def main(
    params_path: str | Path = "params.yaml",
    device: str | None = None,
    as_json: bool = False,
    quick: bool = False,
    overrides: Iterable[str] = (),
    profile: str | None = None,
    world_size: int | None = None,
) -> int:
    """The `hrm doctor` command; returns the exit code (UserError: the caller's `error:` line, exit 1)."""
    import json

    config = load_run_config(params_path, device, overrides, profile, world_size)
    report = run_doctor(config, quick=quick)
    if as_json:
        payload = report.to_dict() | {"params": config.params_path.as_posix(), "quick": quick}
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        print_report(report, config)
    return 0 if report.ok else 1
