"""The memory plan: how each process's share of the global batch is cut into micro-batches, on every device.

The trainer's own step (optimizer included) runs once to warm up, then at 1 and 2 rows; peak memory is affine
in the rows, so the two peaks give a fixed part and a part per example, plus the ACT carry of the rows outside
the micro-batch. The peak is CUDA's allocator peak on CUDA and the process's peak resident set (Linux VmHWM,
reset through /proc/self/clear_refs) on the CPU, where running out means the kernel killing the run without a
message; elsewhere (MPS, CPUs without that counter) the step traced on the meta device (hrm.planning) stands
in. The largest divisor of the share that fits `MEMORY_HEADROOM` of the available memory wins; `hrm doctor`
shows this plan (the same function), it never re-decides it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm.io import UserError
from hrm.training.trace import StepMemory, Workload, carry_bytes_per_row, traced_memory

MEMORY_HEADROOM = 0.90  # fraction of available memory a run may plan to use (allocator fragmentation)
PROBE_ROWS = (1, 2)
MEMINFO = Path("/proc/meminfo")  # Linux: MemAvailable, what the kernel can hand out without swapping
PROC_SELF = Path("/proc/self")
RAM_FIX = "set train.activation_checkpointing=true, or run on a GPU (hrm doctor lists the plan per GPU size)"  # Linux: status (VmRSS, VmHWM) and clear_refs (resets VmHWM)


@dataclass(frozen=True)
class AvailableMemory:
    """The memory a run on a device budgets on: free bytes, total bytes, and what was read (None: unknown)."""

    free: int | None
    total: int | None
    source: str


@dataclass(frozen=True)
class MemoryPlan:
    global_batch: int
    world_size: int
    share: int  # rows per process
    micro_batch: int
    memory: StepMemory | None
    total_bytes: int | None
    free_bytes: int | None = None
    memory_source: str = "free memory"

    @property
    def accumulation(self) -> int:
        return self.share // self.micro_batch

    @property
    def peak_bytes(self) -> int | None:
        return None if self.memory is None else self.memory.peak(self.share, self.micro_batch)

    @property
    def budget_bytes(self) -> int | None:
        return None if self.free_bytes is None else int(self.free_bytes * MEMORY_HEADROOM)

    def describe(self) -> str:
        text = (
            f"global {self.global_batch} = {self.world_size} process{'es' if self.world_size > 1 else ''} x "
            f"{self.accumulation} accumulation x {self.micro_batch}"
        )
        if self.memory is None or self.budget_bytes is None:
            return text + f" (whole share at once: {self.memory_source} unknown here, memory not planned)"
        return (
            f"{text}, est. peak {gib(self.memory.peak(self.share, self.micro_batch))} of "
            f"{gib(self.budget_bytes)} usable ({MEMORY_HEADROOM:.0%} of {gib(self.free_bytes or 0)} "
            f"{self.memory_source}; {self.memory.method})"
        )


def gib(value: float) -> str:
    """Bytes for people: whole GiB from 10 GiB, 2 decimals from 128 MiB, MiB below."""
    if value >= 10 * 2**30:
        return f"{value / 2**30:.0f} GiB"
    return f"{value / 2**30:.2f} GiB" if value >= 2**27 else f"{value / 2**20:.1f} MiB"


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_fitting(share: int, memory: StepMemory, budget: int) -> int:
    """The largest divisor of `share` whose step peak fits `budget`; 0 if not even one row fits."""
    limit = memory.max_micro or share
    return max((d for d in divisors(share) if d <= limit and memory.peak(share, d) <= budget), default=0)


def meminfo_available(meminfo: Path | None = None) -> int | None:
    """MemAvailable of /proc/meminfo (`MEMINFO`) in bytes; None where there is no such file or line."""
    try:
        text = (meminfo or MEMINFO).read_text(encoding="ascii")
        found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def available_memory(device: Any) -> AvailableMemory:
    """The memory a run on `device` budgets on: CUDA's free memory, MPS's recommended maximum, else RAM the
    kernel can hand out (MemAvailable; psutil or sysconf where there is no /proc/meminfo)."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return AvailableMemory(free, total, "free GPU memory (torch.cuda.mem_get_info)")
    if kind == "mps":
        total = getattr(torch.mps, "recommended_max_memory", lambda: None)()
        return AvailableMemory(total, total, "MPS memory (torch.mps.recommended_max_memory)")
    total = None
    sysconf = getattr(os, "sysconf", lambda name: None)  # none on Windows
    try:
        total = (sysconf("SC_PHYS_PAGES") or 0) * (sysconf("SC_PAGE_SIZE") or 0) or None
    except (ValueError, OSError):
        pass
    free = meminfo_available()
    if free is not None:
        return AvailableMemory(free, total, "available RAM (/proc/meminfo MemAvailable)")
    try:
        import psutil

        memory = psutil.virtual_memory()
        return AvailableMemory(memory.available, memory.total, "available RAM (psutil)")
    except ImportError:
        try:
            free = (sysconf("SC_AVPHYS_PAGES") or 0) * (sysconf("SC_PAGE_SIZE") or 0) or None
        except (ValueError, OSError):
            free = None
        return AvailableMemory(free, total, "available RAM (sysconf)")


class ProbeFailed(UserError):
    """The memory probe's trial step (before training: initial weights, lr 0) gave non-finite values."""


@dataclass(frozen=True)
class PeakCounter:
    """The memory a step runs in: `start()` resets the peak and returns the bytes in use, `peak()` the peak
    since; `release()` hands freed memory back between probes."""

    start: Callable[[], int]
    peak: Callable[[], int]
    release: Callable[[], None]
    what: str


def cuda_counter(device: Any) -> PeakCounter:
    import torch

    def start() -> int:
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)

    def peak() -> int:
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)

    return PeakCounter(start, peak, torch.cuda.empty_cache, "max_memory_allocated")


def _status_bytes(field: str, proc: Path) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", (proc / "status").read_text(encoding="ascii"), re.MULTILINE)
    if found is None:
        raise OSError(f"no {field} in {proc / 'status'}")
    return int(found.group(1)) * 1024


def _trim_heap() -> None:
    """Return freed heap memory to the kernel (glibc's malloc_trim), so resident bytes are live bytes."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed memory may stay resident, the baseline then includes it


def rss_counter(proc: Path = PROC_SELF) -> PeakCounter | None:
    """The process's resident set and its peak (VmRSS, VmHWM; the peak reset by writing 5 to clear_refs):
    what the kernel's out-of-memory killer sees. None where that cannot be read or reset (not Linux)."""

    def start() -> int:
        _trim_heap()
        (proc / "clear_refs").write_text("5", encoding="ascii")
        return _status_bytes("VmRSS", proc)

    try:
        start()
        _status_bytes("VmHWM", proc)
    except OSError:
        return None
    return PeakCounter(start, lambda: _status_bytes("VmHWM", proc), _trim_heap, "peak resident set (VmHWM)")


def probe_step(
    make_state: Callable[[int], Any],
    batch: dict[str, Any],
    rows: int,
    device: Any,
    global_batch_size: int,
    counter: PeakCounter | None = None,
) -> tuple[int, int, float]:
    """(peak bytes above the memory in use before it, carry bytes per row, seconds) of a fresh state's step at
    `rows`, lr 0; `counter` defaults to CUDA's."""
    from hrm.optim import ZERO_LR
    from hrm.training.step import train_step

    counter = counter or cuda_counter(device)
    baseline = counter.start()
    state = make_state(rows)
    part = {k: v[:rows].to(device) for k, v in batch.items()}
    started = time.perf_counter()
    train_step(state, part, schedule=ZERO_LR, global_batch_size=global_batch_size)
    peak = counter.peak()  # synchronizes CUDA: the step's time is complete
    seconds = time.perf_counter() - started
    return peak - baseline, carry_bytes_per_row(state.module, part), seconds


def measure_cuda_step(
    make_state: Callable[[int], Any],
    batch: dict[str, Any],
    device: Any,
    global_batch_size: int,
    counter: PeakCounter | None = None,
) -> StepMemory:
    """Peak bytes of the trainer's step at 1 and 2 rows, extrapolated; `make_state(rows)` builds a fresh
    `TrainState` for `rows`; `counter` defaults to CUDA's allocator (`rss_counter` on the CPU). A throwaway step
    runs first: the process's first work pays one-time allocations (cuBLAS workspaces, pools, thread buffers)
    that would shrink the bytes per example. If 2 rows run out of CUDA memory, the 1-row step gives the plan (1)."""
    import torch

    from hrm.training.step import TrainingDiverged

    counter = counter or cuda_counter(device)
    what = counter.what
    peaks: list[tuple[int, int, float]] = []  # (peak bytes, carry bytes per row, seconds) at 1 and 2 rows
    rows = 1
    try:
        probe_step(
            make_state, batch, 1, device, global_batch_size, counter
        )  # warm-up: its figures are dropped
        for rows in PROBE_ROWS:
            peaks.append(probe_step(make_state, batch, rows, device, global_batch_size, counter))
    except torch.cuda.OutOfMemoryError:
        if not peaks:
            raise UserError(
                "CUDA ran out of memory in the memory probe's step at 1 row, before training: not even micro-batch "
                "1 fits; set train.activation_checkpointing=true, or use a smaller model or a larger GPU"
            ) from None
        (peak, carry_row, seconds), *_ = peaks
        method = (
            f"measured: {what} of the trainer's step at 1 row after a warm-up step (2 rows ran out of memory)"
        )
        return StepMemory(0, peak, carry_row, method, max_micro=1, step_seconds=(seconds,))
    except TrainingDiverged as err:
        raise ProbeFailed(
            f"memory probe: its trial step at {rows} row{'s' if rows > 1 else ''} before training (initial "
            f"weights, lr 0) gave non-finite values: {err.culprit}. The model cannot run as configured; this "
            "is not the run diverging: check arch.forward_dtype and arch.loss (hrm doctor runs the same step)"
        ) from None
    finally:
        counter.release()
    (peak_1, _, seconds_1), (peak_2, carry_row, seconds_2) = peaks
    per_example = max(peak_2 - peak_1, 1)
    method = f"measured: {what} of the trainer's step at 1 and 2 rows after a warm-up, linear in rows"
    return StepMemory(
        peak_1 - per_example, per_example, carry_row, method, step_seconds=(seconds_1, seconds_2)
    )


def plan(
    global_batch: int,
    world_size: int,
    configured_micro: int | None,
    memory: StepMemory | None,
    free_bytes: int | None,
    total_bytes: int | None,
    memory_source: str = "free memory",
    fix: str = "use more GPUs",
) -> MemoryPlan:
    """The micro-batch: the configured one (refused if it cannot fit) or the largest divisor that fits; `fix`
    ends the refusal when not even one row fits."""
    share = global_batch // world_size
    budget = int(free_bytes * MEMORY_HEADROOM) if free_bytes is not None else None
    micro = configured_micro or share
    if memory is not None and budget is not None:
        largest = largest_fitting(share, memory, budget)
        usable = f"{gib(budget)} usable ({MEMORY_HEADROOM:.0%} of {gib(free_bytes or 0)} {memory_source})"
        if largest == 0:
            raise UserError(
                f"not even a micro-batch of 1 fits: a step needs ~{gib(memory.peak(share, 1))} with "
                f"{share} rows of ACT carry, {usable}; lower train.global_batch_size or {fix}"
            )
        if configured_micro is not None and configured_micro > largest:
            raise UserError(
                f"params.yaml: train.micro_batch_size {configured_micro} does not fit: it needs "
                f"~{gib(memory.peak(share, configured_micro))}, {usable}; the largest that fits is {largest} "
                "(or set auto)"
            )
        micro = configured_micro or largest
    return MemoryPlan(global_batch, world_size, share, micro, memory, total_bytes, free_bytes, memory_source)


def traced_step_memory(work: Workload, train: Any, dtype: str, device: str) -> StepMemory:
    """The step traced on meta (`traced_memory`) as a plan takes it where nothing is measured: at least one byte
    per row, so that the peak grows with the micro-batch."""
    traced = traced_memory(work, train, dtype, device)
    return dataclasses.replace(traced, per_example=max(traced.per_example, 1))


def first_batch(dataset: Any, rows: int) -> dict[str, Any]:
    """The dataset's first rows as a training batch (shapes for measuring a step)."""
    return dataset.rows(0, min(rows, dataset.num_examples), pad_to=rows)


def step_memory(arch: dict[str, Any], metadata: Any, config: Any, device: Any, dataset: Any) -> StepMemory:
    """The step's memory on `device`: measured (CUDA's allocator, the CPU's resident set), else traced on meta."""
    counter = (
        cuda_counter(device) if device.type == "cuda" else rss_counter() if device.type == "cpu" else None
    )
    if counter is None:
        from hrm.runtime import dtype_name

        dtype = dtype_name(str(arch.get("forward_dtype", "auto")), device)
        return traced_step_memory(Workload(dict(arch), metadata), config, dtype, device.type)
    from hrm.training.state import new_state

    def make_state(rows: int) -> Any:
        return new_state(arch, metadata, config, rows, device)  # the run's state, EMA copy included

    batch = first_batch(dataset, max(PROBE_ROWS))
    return measure_cuda_step(make_state, batch, device, config.global_batch_size, counter)


def plan_micro_batch(
    arch: dict[str, Any],
    metadata: Any,
    config: Any,
    world_size: int,
    device: Any,
    configured_micro: int | None,
    dataset: Any,
) -> MemoryPlan:
    """The trainer's plan on every device (`hrm doctor` shows this one): the step's memory (`step_memory`)
    against the memory available after it (`plan_here`)."""
    memory = step_memory(arch, metadata, config, device, dataset)
    return plan_here(memory, config.global_batch_size, world_size, configured_micro, device)


def plan_here(
    memory: StepMemory, global_batch: int, world_size: int, configured_micro: int | None, device: Any
) -> MemoryPlan:
    """`plan` of a step's `memory` against the memory `device` has available now (`available_memory`); a refusal
    ends with the fix for that device (more GPUs, else RAM_FIX)."""
    import torch

    available = available_memory(device)
    fix = "use more GPUs" if torch.device(device).type == "cuda" else RAM_FIX
    return plan(
        global_batch,
        world_size,
        configured_micro,
        memory,
        available.free,
        available.total,
        available.source,
        fix,
    )


def oom_message(micro_batch: int, checkpoint: Any) -> str:
    """What to do after CUDA ran out of memory mid-run."""
    smaller = max((d for d in divisors(micro_batch) if d < micro_batch), default=1)
    return (
        f"CUDA ran out of memory at micro-batch {micro_batch}; try train.micro_batch_size={smaller} "
        f"(dvc exp run -S train.micro_batch_size={smaller}). Last good checkpoint: {checkpoint or 'none yet'}; "
        "resuming from it with another micro-batch gives the same run."
    )
