"""GPU acceptance run: one command, one JSON of figures, well inside 8 minutes on an H200.

    PYTHONPATH=$PWD python bench/gpu_check.py --out gpu_check.json      # on the GPU machine
    PYTHONPATH=$PWD python bench/gpu_check.py --smoke --out smoke.json  # the same parts on the CPU, toy sizes

How to run it on a lent GPU machine with one call (wheels, command line): docs/gpu_check.md.

Parts, in this order, each with the most it may take on one H200 (seconds; typical figures in the docs). Every
timing runs under the trainer's runtime settings (`trainer_runtime`: threads, `train.deterministic`):
  memory_plan    60  the trainer's `auto` memory plan (hrm.training.memory), made as the process's first CUDA
                     work as in the trainer, against torch.cuda.max_memory_allocated of a real step at the
                     planned micro-batch (within PLAN_TOLERANCE) and its max_memory_reserved growth against
                     the plan's budget; the probe's step also at PROBE_MORE_ROWS. The proof of the memory plan.
  doctor         90  `hrm doctor` on the paper params with train.compile=true (so its compile check builds
                     and runs a Triton kernel); fails when the doctor says NOT READY.
  step_eager     45  a bf16 8192^3 matmul (the ceiling measured now), then the paper-shape training step
                     (40x40, `--batch` rows, bf16): s/step, row-segments/s, examples/s (rows that halted),
                     MFU = FLOPs per step (batch x hrm.models.flops, formula in the JSON) / time / peak, the
                     peak from the data sheet (exact GPU names; else "unknown") and the measured ceiling.
  determinism    75  two 20-step runs of the trainer (`deterministic: true`) give bit-identical weights.
  end_to_end     90  the tiny profile's stages on the GPU: generate, convert, validate, train, evaluate, each
                     stage a process killed when the part's time is spent.
  step_compiled  60+ the eager timing under torch.compile, last, in a child process killed when the time left
                     before the deadline is spent (or `--compile-limit-s`): a compile that hangs costs that and
                     no more, its progress stamps say how far it got; the eager figures stay.
The budgets before the compile add up to 360 s; `--deadline-s` (default 420 s, 7 minutes): a part is not
started when less time is left than its budget, and counts as failed ("not run"). With the machine's
start-up (a minute or two) a device session of 15 minutes holds the run and one rerun of a part.

Each part records its own error and the script goes on; `seconds` holds what each part took; the JSON is
rewritten (atomically) after every part, so a killed run keeps the parts it finished. Exit 1 if any part
failed. Without CUDA (and without --smoke) it stops at once with "no CUDA" (exit 2) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Dense bf16 tensor-core peaks (fp32 accumulate, vendor data sheets) by torch.cuda.get_device_name(), exactly:
# a name not here (another H100 form factor, say) is "unknown" rather than a guess; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.0,  # H200 SXM
}
MATMUL_SIDE = 8192  # the measured ceiling: a bf16 (side x side) @ (side x side) product, as KINDS.md's
MATMUL_SMOKE_SIDE = 256  # (fp32 on the CPU in a smoke run: plumbing only)
MATMUL_WARMUP, MATMUL_REPS = 2, 5
PLAN_TOLERANCE = 0.15
PROBE_MORE_ROWS = (4, 8)  # the memory probe's line (through 1 and 2 rows) checked at these too
DEFAULT_DEADLINE_S = 420.0
SMOKE_DEADLINE_S = 1800.0
COMPILE_MIN_S = 60.0  # the compiled part starts only with this much left before the deadline
WARMUP_STEPS = 2  # untimed steps before the timed ones (the first compiles under torch.compile)
END_TO_END_STAGES = ("generate", "convert", "validate", "train", "evaluate")


@dataclass(frozen=True)
class Settings:
    """What the parts run on: the paper shapes on CUDA, or (`smoke`) the tiny profile on the CPU."""

    device: str
    batch: int
    steps: int
    peak_tflops: float | None
    compile_limit_s: float | None  # None: the compiled part takes the time left before the deadline

    @property
    def smoke(self) -> bool:
        return self.device == "cpu"


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[dict[str, Any], float], None]  # (report, seconds it may take)
    budget_s: float  # the least time left before the deadline for it to start
    fill: bool = False  # it may take all the time left before the deadline (not only budget_s)


def no_cuda_message() -> str | None:
    """None when a CUDA device is usable, else why not."""
    try:
        import torch
    except ImportError:
        return "no CUDA: torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA: torch {torch.__version__} sees no CUDA device; this script needs a GPU"
    return None


def paper_params() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def run_params(settings: Settings) -> dict[str, Any]:
    """The paper params in bf16 on CUDA; the tiny profile in fp32 for a smoke run on the CPU."""
    from hrm.config import run_params as with_profile

    params = with_profile(paper_params(), "tiny") if settings.smoke else paper_params()
    params["arch"]["forward_dtype"] = "float32" if settings.smoke else "bfloat16"
    params["train"]["device"] = settings.device
    return params


def grid_side(params: dict[str, Any]) -> int:
    return int(params["generate"]["rows"])


def synthetic_dataset(root: Path, groups: int, side: int) -> Any:
    """Random side x side grids in our layout (groups of 4 vehicles): shapes are what the timing needs."""
    from _common import write_random_routing_layout

    from hrm.training.data import PuzzleDataset

    write_random_routing_layout(root / "train", groups, side)
    write_random_routing_layout(root / "test", 2, side)
    return PuzzleDataset(root, "train")


def make_state(arch: dict[str, Any], dataset: Any, rows: int, train: dict[str, Any], device: Any) -> Any:
    """The trainer's own state (`hrm.training.state.new_state`: weights for `rows`, optimizers, EMA)."""
    from hrm.training.setup import TrainConfig
    from hrm.training.state import new_state

    config = TrainConfig.from_params(train)
    return new_state(arch, dataset.metadata, config, rows, device, compile_model=config.compile)


def synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def write_report(path: Path, report: dict[str, Any]) -> None:
    from hrm.io import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")


def bounded_run(command: list[str], limit_s: float, env: dict[str, str] | None = None) -> str:
    """Run `command` in its own process group; kill the whole group (compile workers included) after
    `limit_s`. Its stdout; RuntimeError with the end of its stderr if it fails, TimeoutError if killed."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=max(limit_s, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise TimeoutError(
            f"{' '.join(command[1:3])} ... did not finish in {limit_s:.0f} s: killed"
        ) from None
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:3])} ... exited {process.returncode}: {stderr[-1500:]}")
    return stdout


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


# ------------------------------------------------------------------------------------------------- parts


def part_memory_plan(report: dict[str, Any], settings: Settings) -> None:
    """The plan's predicted peak against the measured peak of a real step at the planned micro-batch (its
    allocator reservations against the plan's budget), and the probe's line checked at more rows."""
    import torch

    from hrm.training.memory import plan_micro_batch
    from hrm.training.setup import TrainConfig

    params = run_params(settings)
    arch, train = params["arch"], params["train"]
    device = torch.device(settings.device)
    config = TrainConfig.from_params(train)
    runtime = trainer_runtime(train, device)  # before the first CUDA work, as in the trainer
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_dataset(Path(tmp), config.global_batch_size // 4 + 1, grid_side(params))
        plan = plan_micro_batch(arch, dataset.metadata, config, 1, device, None, dataset)
        allocated, reserved = measured_step_peak(arch, dataset, plan, train, device)
        probes = probe_more_rows(arch, dataset, config, device, plan.memory)
    report["memory_plan"] = {
        **plan_against_measured(plan, allocated, reserved),
        "probe_rows": probes,
        "runtime": runtime,
    }
    figures = report["memory_plan"]
    if figures["ok"] is False:
        raise AssertionError(
            f"plan estimate off by {figures['relative_error']:.1%} (> {PLAN_TOLERANCE:.0%}) or the step "
            f"reserved {figures['measured_peak_reserved_bytes']} bytes > the plan's budget {figures['budget_bytes']}"
        )


def cuda_step_counter(device: Any, reserved: list[int]) -> Any:
    """hrm.training.memory's CUDA counter (max_memory_allocated above the start), also appending to
    `reserved` each step's growth of torch.cuda.max_memory_reserved: what the allocator took from the GPU."""
    import torch

    from hrm.training.memory import PeakCounter, cuda_counter

    allocated = cuda_counter(device)
    reserved_at_start: list[int] = []

    def start() -> int:
        baseline = allocated.start()  # empties the cache and resets every peak, reserved included
        reserved_at_start.append(torch.cuda.memory_reserved(device))
        return baseline

    def peak() -> int:
        value = allocated.peak()
        reserved.append(torch.cuda.max_memory_reserved(device) - reserved_at_start[-1])
        return value

    return PeakCounter(start, peak, allocated.release, "max_memory_allocated (+ max_memory_reserved)")


def measured_step_peak(
    arch: dict[str, Any], dataset: Any, plan: Any, train: dict[str, Any], device: Any
) -> tuple[int | None, int | None]:
    """(max_memory_allocated, max_memory_reserved) growth of one trainer step over the share at the plan's
    micro-batch; (None, None) off CUDA (the step still runs, so the plumbing is checked)."""
    from hrm.optim import LrSchedule
    from hrm.training.memory import first_batch
    from hrm.training.step import train_step

    cuda = device.type == "cuda"
    reserved: list[int] = []
    counter = cuda_step_counter(device, reserved) if cuda else None
    baseline = counter.start() if counter else 0
    state = make_state(arch, dataset, plan.micro_batch, dict(train, compile=False), device)
    rows = {k: v.to(device) for k, v in first_batch(dataset, plan.share).items()}
    train_step(
        state,
        rows,
        global_batch_size=plan.global_batch,
        schedule=LrSchedule(warmup_steps=0, total_steps=0, min_ratio=1.0),  # each optimizer's base lr
        micro_batch_size=plan.micro_batch,
    )
    if counter is None:
        return None, None
    allocated = counter.peak() - baseline
    counter.release()
    return allocated, reserved[-1]


def probe_more_rows(
    arch: dict[str, Any], dataset: Any, config: Any, device: Any, memory: Any
) -> list[dict[str, Any]]:
    """The memory probe's step (hrm.training.memory.probe_step) at PROBE_MORE_ROWS as well as the plan's 1
    and 2: the plan extrapolates a line through 1 and 2 rows, checked here at more; on CUDA each point also
    has its reserved bytes. On the CPU the resident-set counter runs (plumbing; no CUDA figures)."""
    from hrm.training.memory import PROBE_ROWS, first_batch, probe_step, rss_counter
    from hrm.training.state import new_state

    reserved: list[int] = []
    counter = cuda_step_counter(device, reserved) if device.type == "cuda" else rss_counter()
    if counter is None:
        return []
    rows_all = sorted({*PROBE_ROWS, *PROBE_MORE_ROWS})
    batch = first_batch(dataset, max(rows_all))
    points = []
    try:
        for rows in rows_all:
            peak, _, seconds = probe_step(
                lambda n: new_state(arch, dataset.metadata, config, n, device),
                batch,
                rows,
                device,
                config.global_batch_size,
                counter,
            )
            predicted = memory.peak(rows, rows) if memory is not None else None
            points.append(
                {
                    "rows": rows,
                    "allocated_bytes": peak,
                    "reserved_bytes": reserved[-1] if reserved else None,
                    "predicted_bytes": predicted,
                    "relative_error": abs(predicted - peak) / peak if predicted and peak > 0 else None,
                    "seconds": seconds,
                    "counter": counter.what,
                }
            )
    finally:
        counter.release()
    return points


def plan_against_measured(plan: Any, measured: int | None, reserved: int | None = None) -> dict[str, Any]:
    """The comparison's figures: the estimate against max_memory_allocated within PLAN_TOLERANCE, and the
    step's reservations (max_memory_reserved growth) within the plan's budget; `ok` None off CUDA."""
    figures: dict[str, Any] = {
        "plan": plan.describe(),
        "micro_batch": plan.micro_batch,
        "accumulation": plan.accumulation,
        "estimated_peak_bytes": plan.peak_bytes,
        "measured_peak_bytes": measured,
        "measured_peak_reserved_bytes": reserved,
        "budget_bytes": plan.budget_bytes,
        "tolerance": PLAN_TOLERANCE,
    }
    if plan.peak_bytes is None or measured is None:
        return {**figures, "relative_error": None, "ok": None, "note": "no memory figures off CUDA"}
    if measured <= 0:
        raise AssertionError(f"the measured step allocated {measured} bytes: the CUDA counters did not move")
    error = abs(plan.peak_bytes - measured) / measured
    fits = None if reserved is None or plan.budget_bytes is None else reserved <= plan.budget_bytes
    return {
        **figures,
        "relative_error": error,
        "reserved_within_budget": fits,
        "ok": error <= PLAN_TOLERANCE and fits is not False,
    }


def part_doctor(report: dict[str, Any], settings: Settings) -> None:
    """`hrm doctor`'s report; the part fails when it says NOT READY."""
    from hrm import doctor

    overrides = ["train.compile=true"]
    profile = "tiny" if settings.smoke else None
    config = doctor.load_run_config(REPO / "params.yaml", settings.device, overrides, profile)
    result = doctor.run_doctor(config, quick=settings.smoke)
    report["doctor"] = {**result.to_dict(), "overrides": overrides, "profile": profile}
    failed = [f"{check.name}: {check.detail}" for check in result.checks if check.status == doctor.FAIL]
    if failed:
        raise AssertionError("hrm doctor says NOT READY: " + " | ".join(failed))


def trainer_runtime(train: dict[str, Any], device: Any) -> dict[str, Any]:
    """The process-wide settings the trainer applies before its first step (hrm.training.setup.prepared_run:
    CPU threads, `train.deterministic`), applied the same way here so timings are the trainer's; what was set."""
    import torch

    from hrm.runtime import set_cpu_threads, set_determinism

    set_cpu_threads(int(train["threads"]))
    set_determinism(bool(train["deterministic"]), device)
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "threads": torch.get_num_threads(),
    }


def time_steps(
    settings: Settings, compiled: bool, progress: Callable[[str], None] = lambda phase: None
) -> dict[str, Any]:
    """Warm-up and timed trainer steps at `settings.batch` rows (the compile happens in the warm-up), under
    the trainer's runtime settings (`trainer_runtime`)."""
    from hrm.optim import LrSchedule
    from hrm.training.memory import first_batch
    from hrm.training.step import train_step

    params = run_params(settings)
    batch = settings.batch
    train = dict(params["train"], global_batch_size=batch, compile=compiled)
    runtime = trainer_runtime(train, settings.device)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_dataset(Path(tmp), batch // 4 + 1, grid_side(params))
        state = make_state(params["arch"], dataset, batch, train, settings.device)
        rows = {k: v.to(settings.device) for k, v in first_batch(dataset, batch).items()}

        def run(steps: int) -> tuple[float, float]:
            """(seconds, examples finished: rows that halted in these steps, the loss head's `count`)."""
            started, finished = time.perf_counter(), 0.0
            for _ in range(steps):
                result = train_step(
                    state,
                    rows,
                    schedule=LrSchedule(warmup_steps=0, total_steps=0, min_ratio=1.0),
                    global_batch_size=batch,
                )
                finished += float(result.metrics["count"])
            synchronize(settings.device)
            return time.perf_counter() - started, finished

        progress("state built, first (compiling) step started")
        warmup_s, _ = run(1)
        progress("first step done")
        more_s, _ = run(WARMUP_STEPS - 1)
        warmup_s += more_s
        progress("warm-up done, timed steps started")
        timed_s, finished = run(settings.steps)
    step_s = timed_s / settings.steps
    return {
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        # a step is one ACT segment of every row: rows x segments, not whole examples
        "row_segments_per_s": batch / step_s,
        # rows that halted in the timed steps (each a whole example, however many segments it took)
        "examples_per_s": finished / timed_s,
        "examples_finished": finished,
        "warmup_s": warmup_s,
        "runtime": runtime,
    }


def matmul_ceiling(settings: Settings) -> dict[str, Any]:
    """The bf16 matrix-product rate this GPU reaches now (MATMUL_SIDE^3, random data, best of MATMUL_REPS
    after MATMUL_WARMUP): the ceiling measured in the same run as the steps, beside the data sheet's."""
    import torch

    side = MATMUL_SMOKE_SIDE if settings.smoke else MATMUL_SIDE
    dtype = torch.float32 if settings.smoke else torch.bfloat16
    generator = torch.Generator(device=settings.device).manual_seed(0)
    a, b = (
        torch.randn(side, side, device=settings.device, dtype=dtype, generator=generator) for _ in range(2)
    )
    times = []
    for rep in range(MATMUL_WARMUP + MATMUL_REPS):
        synchronize(settings.device)
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(settings.device)
        if rep >= MATMUL_WARMUP:
            times.append(time.perf_counter() - started)
    flops = 2 * side**3
    return {"side": side, "dtype": str(dtype), "best_s": min(times), "tflops": flops / min(times) / 1e12}


def step_speed_figures(report: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """report["step_speed"], made on first use: the GPU, the batch, FLOPs per step and the peak."""
    if "step_speed" in report:
        return report["step_speed"]
    import torch

    from hrm.data.spec import VOCAB_SIZE
    from hrm.models import ModelConfig
    from hrm.models.flops import FORMULA, segment_flops

    params = run_params(settings)
    side = grid_side(params)
    sizes = dict(seq_len=side * side, vocab_size=VOCAB_SIZE, num_puzzle_identifiers=5)  # 4 vehicles + blank
    model = ModelConfig.from_arch(params["arch"], **sizes, batch_size=settings.batch, device=settings.device)
    flops, formula = settings.batch * segment_flops(model).total, f"batch x ({FORMULA})"
    name = torch.cuda.get_device_name() if not settings.smoke else "cpu (smoke run)"
    peak: float | str = settings.peak_tflops or PEAK_BF16_TFLOPS.get(name, "unknown")
    report["step_speed"] = {
        "gpu": name,
        "batch": settings.batch,
        "seq_len": side * side,
        "peak_bf16_tflops": peak,
        "peak_source": "--peak-tflops" if settings.peak_tflops else "data sheet (PEAK_BF16_TFLOPS)",
        "matmul_ceiling": matmul_ceiling(settings),
        "flops_per_step": flops,
        "flops_formula": formula,
        "mfu_formula": "flops_per_step / step_s / (peak_bf16_tflops x 1e12)",
        "mfu_vs_matmul_formula": "flops_per_step / step_s / (matmul_ceiling.tflops x 1e12)",
    }
    return report["step_speed"]


def with_mfu(figures: dict[str, Any], speed: dict[str, Any]) -> dict[str, Any]:
    """MFU against the data sheet's peak ("unknown" for a GPU not in the table) and the measured ceiling."""
    achieved = speed["flops_per_step"] / figures["step_s"] / 1e12  # TFLOP/s
    peak = speed["peak_bf16_tflops"]
    return {
        **figures,
        "tflops": achieved,
        "mfu": achieved / peak if isinstance(peak, float) else "unknown",
        "mfu_vs_matmul": achieved / speed["matmul_ceiling"]["tflops"],
    }


def part_step_eager(report: dict[str, Any], settings: Settings) -> None:
    speed = step_speed_figures(report, settings)
    speed["eager"] = with_mfu(time_steps(settings, compiled=False), speed)


def part_step_compiled(report: dict[str, Any], settings: Settings, left_s: float) -> None:
    """The compiled timing in a child process, killed with its compile workers when its limit is spent: the
    time left before the deadline (this part runs last and takes what the others left), capped by
    `--compile-limit-s` if given. The child stamps its progress, so a killed compile still says how far it
    got (`compile_progress`: phase -> seconds since the child started) and a finished one how long the first,
    compiling step took and what dynamo compiled (`compile_stats`)."""
    speed = step_speed_figures(report, settings)
    limit_s = min(left_s, settings.compile_limit_s or float("inf"))
    speed["compile_limit_s"] = limit_s
    with tempfile.TemporaryDirectory() as tmp:
        out, stamps = Path(tmp) / "compiled.json", Path(tmp) / "progress.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--time-compiled", "--out", str(out)]
        command += ["--batch", str(settings.batch), "--steps", str(settings.steps), "--progress", str(stamps)]
        command += ["--smoke"] if settings.smoke else []
        try:
            bounded_run(command, limit_s, child_env())
        finally:
            speed["compile_progress"] = read_progress(stamps)
        speed["compiled"] = with_mfu(json.loads(out.read_text(encoding="utf-8")), speed)
    if "eager" in speed:
        speed["compiled_speedup"] = speed["eager"]["step_s"] / speed["compiled"]["step_s"]


def progress_writer(path: Path | None) -> Callable[[str], None]:
    """A stamp function for the compiled child: phase -> seconds since it started, rewritten atomically."""
    started, stamps = time.perf_counter(), {}

    def stamp(phase: str) -> None:
        stamps[phase] = round(time.perf_counter() - started, 2)
        if path is not None:
            write_report(path, stamps)

    stamp("started")
    return stamp


def read_progress(path: Path) -> dict[str, float]:
    """The child's stamps; {} when it wrote none (killed before its imports finished)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def dynamo_stats() -> dict[str, Any]:
    """What torch.compile did in this process (graphs, frames, per-function compile seconds), from dynamo's
    counters; private API, so any change there leaves a note instead."""
    try:
        from torch._dynamo.utils import compile_times, counters

        return {
            "stats": {k: int(v) for k, v in counters["stats"].items()},
            "graph_breaks": sum(counters["graph_break"].values()),
            "compile_times": compile_times(repr="str"),
        }
    except Exception as err:  # noqa: BLE001 (private API: record, never fail the timing for it)
        return {"note": f"dynamo counters unavailable: {type(err).__name__}: {err}"}


def part_determinism(report: dict[str, Any], settings: Settings) -> None:
    """Two short runs of the trainer with train.deterministic: true must give bit-identical weights."""
    import copy

    import torch

    from hrm.training.loop import train

    params = run_params(settings)
    weights, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_dataset(Path(tmp) / "data", 64, grid_side(params))
        for run in ("a", "b"):
            # the whole params (the trainer checks every section's rules), its outputs under tmp/run
            one_run = copy.deepcopy(params)
            one_run["train"].update(
                global_batch_size=8 if settings.smoke else 32,
                epochs=10,
                eval_interval=10,
                max_steps=4 if settings.smoke else 20,
                deterministic=True,
                compile=False,
            )
            one_run["paths"] = {k: str(Path(tmp) / run / Path(v)) for k, v in params["paths"].items()}
            one_run["paths"]["hrm"] = str(Path(tmp) / "data")
            summary = train(copy.deepcopy(one_run))
            weights.append(torch.load(one_run["paths"]["model"], weights_only=True))
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    report["determinism"] = {
        "steps": summary["step"],
        "identical": not differing,
        "differing": differing[:10],
    }
    if differing:
        raise AssertionError(f"{len(differing)} weight tensors differ between two deterministic runs")


def part_end_to_end(report: dict[str, Any], settings: Settings, limit_s: float) -> None:
    """The tiny profile's stages as `dvc repro` runs them (one process each), training on the device."""
    import yaml

    from hrm.config import run_params as with_profile

    params = with_profile(paper_params(), "tiny")
    params["train"]["device"] = settings.device
    started = time.perf_counter()
    stage_s: dict[str, float] = {}
    report["end_to_end"] = {"profile": "tiny", "stage_s": stage_s}
    with tempfile.TemporaryDirectory() as tmp:
        params["paths"] = {k: str(Path(tmp) / Path(v)) for k, v in params["paths"].items()}
        config = Path(tmp) / "params.yaml"
        config.write_text(yaml.safe_dump(params), encoding="utf-8")
        for stage in END_TO_END_STAGES:
            stage_started = time.perf_counter()
            left = limit_s - (stage_started - started)
            bounded_run([sys.executable, "-m", f"stages.{stage}", "--params", str(config)], left, child_env())
            stage_s[stage] = time.perf_counter() - stage_started
        metrics = json.loads((Path(params["paths"]["eval_reports"]) / "metrics.json").read_text())
    report["end_to_end"]["test"] = {
        k: v for k, v in metrics.get("test", {}).items() if not isinstance(v, dict)
    }


def parts(settings: Settings) -> list[Part]:
    """The parts in order; the memory plan first, so that its probe is the process's first CUDA work."""
    return [
        Part("memory_plan", lambda r, s: part_memory_plan(r, settings), 60),
        Part("doctor", lambda r, s: part_doctor(r, settings), 90),
        Part("step_eager", lambda r, s: part_step_eager(r, settings), 45),
        Part("determinism", lambda r, s: part_determinism(r, settings), 75),
        Part("end_to_end", lambda r, s: part_end_to_end(r, settings, s), 90),
        # last: the compile gets whatever the parts before it left before the deadline
        Part("step_compiled", lambda r, s: part_step_compiled(r, settings, s), COMPILE_MIN_S, fill=True),
    ]


def run_parts(
    todo: list[Part],
    report: dict[str, Any],
    out: Path,
    deadline_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Each part in turn, unless less than its budget is left before the deadline; errors and seconds
    recorded per part, the JSON rewritten after each."""
    errors, seconds = report.setdefault("errors", {}), report.setdefault("seconds", {})
    report["budget_s"] = {part.name: part.budget_s for part in todo}
    report["deadline_s"] = deadline_s
    started = clock()
    for part in todo:
        left = deadline_s - (clock() - started)
        part_started = clock()
        if left < part.budget_s:
            errors[part.name] = (
                f"not run: {left:.0f} s left before the {deadline_s:.0f} s deadline, it may take {part.budget_s:.0f} s"
            )
        else:
            try:
                part.run(report, left if part.fill else part.budget_s)
            except Exception as err:  # record and go on: one JSON with every figure that could be had
                errors[part.name] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"
        seconds[part.name] = clock() - part_started
        print(
            f"{part.name}: {'FAILED' if part.name in errors else 'ok'} ({seconds[part.name]:.0f} s)",
            flush=True,
        )
        write_report(out, report)
    report["total_s"] = clock() - started
    write_report(out, report)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu_check.json", help="the JSON of figures")
    parser.add_argument("--batch", type=int, default=64, help="rows of the timed paper-shape step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help=f"no part starts past it (GPU: {DEFAULT_DEADLINE_S:.0f})",
    )
    parser.add_argument(
        "--compile-limit-s",
        type=float,
        default=None,
        help="cap on the compiled part (default: the time left before the deadline)",
    )
    parser.add_argument("--progress", type=Path, default=None, help=argparse.SUPPRESS)  # the child's stamps
    parser.add_argument("--only", default="", help="comma-separated part names (default: all)")
    parser.add_argument("--smoke", action="store_true", help="the tiny profile on the CPU: checks the code")
    parser.add_argument("--time-compiled", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    reason = None if args.smoke else no_cuda_message()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    batch = 4 if args.smoke else args.batch
    settings = Settings(
        "cpu" if args.smoke else "cuda", batch, args.steps, args.peak_tflops, args.compile_limit_s
    )
    if args.time_compiled:
        stamp = progress_writer(args.progress)
        figures = time_steps(settings, compiled=True, progress=stamp)
        stamp("timed steps done")
        write_report(Path(args.out), {**figures, "compile_stats": dynamo_stats()})
        return 0
    todo = [part for part in parts(settings) if not args.only or part.name in args.only.split(",")]
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "smoke": args.smoke,
    }
    # the CPU is slower: no deadline, but a finite one for the compiled part to fill
    deadline_s = args.deadline_s or (SMOKE_DEADLINE_S if args.smoke else DEFAULT_DEADLINE_S)
    run_parts(todo, report, Path(args.out), deadline_s)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
