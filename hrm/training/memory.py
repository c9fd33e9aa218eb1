"""The memory plan: how each process's share of the global batch is cut into micro-batches.

On CUDA the trainer's own step (optimizer included) runs once to warm up, then at 1 and 2 rows; peak memory
is affine in the rows, so the two peaks give a fixed part and a part per example, plus the ACT carry of the
rows outside the micro-batch. The largest divisor of the share that fits `MEMORY_HEADROOM` of the free memory
wins. Off CUDA the whole share runs at once (RAM is not measured here; `hrm doctor` traces an estimate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hrm.io import UserError

MEMORY_HEADROOM = 0.90  # fraction of free device memory a run may plan to use (allocator fragmentation)
PROBE_ROWS = (1, 2)


@dataclass(frozen=True)
class StepMemory:
    """Peak bytes of one training step as `fixed + per_example * micro + carry_per_row * (share - micro)`."""

    fixed: int
    per_example: int
    carry_per_row: int
    method: str
    max_micro: int | None = None  # the most rows a probe ran before CUDA ran out (None: no limit seen)

    def peak(self, share: int, micro: int) -> int:
        return self.fixed + self.per_example * micro + self.carry_per_row * (share - micro)


@dataclass(frozen=True)
class MemoryPlan:
    global_batch: int
    world_size: int
    share: int  # rows per process
    micro_batch: int
    memory: StepMemory | None
    total_bytes: int | None

    @property
    def accumulation(self) -> int:
        return self.share // self.micro_batch

    @property
    def peak_bytes(self) -> int | None:
        return None if self.memory is None else self.memory.peak(self.share, self.micro_batch)

    def describe(self) -> str:
        text = (
            f"global {self.global_batch} = {self.world_size} process{'es' if self.world_size > 1 else ''} x "
            f"{self.accumulation} accumulation x {self.micro_batch}"
        )
        if self.peak_bytes is not None and self.total_bytes:
            text += f", est. peak {gib(self.peak_bytes)} of {gib(self.total_bytes)}"
            return text + f" (budget {MEMORY_HEADROOM:.0%} of free memory; {self.memory.method})"
        return text + " (whole share at once off CUDA; memory not measured, see hrm doctor)"


def gib(value: float) -> str:
    return f"{value / 2**30:.0f} GiB" if value >= 10 * 2**30 else f"{value / 2**30:.2f} GiB"


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_fitting(share: int, memory: StepMemory, budget: int) -> int:
    """The largest divisor of `share` whose step peak fits `budget`; 0 if not even one row fits."""
    limit = memory.max_micro or share
    return max((d for d in divisors(share) if d <= limit and memory.peak(share, d) <= budget), default=0)


def carry_bytes_per_row(head: Any, batch: dict[str, Any]) -> int:
    """Bytes of one row of the ACT carry (state, step count, halted flag, the row's example)."""
    import torch

    carry = head.initial_carry({k: v[:1] for k, v in batch.items()})
    return sum(t.numel() * t.element_size() for t in carry.to_state().values() if isinstance(t, torch.Tensor))


class ProbeFailed(UserError):
    """The memory probe's trial step (before training: initial weights, lr 0) gave non-finite values."""


def probe_step(
    make_state: Callable[[int], Any], batch: dict[str, Any], rows: int, device: Any, global_batch_size: int
) -> tuple[int, int]:
    """(peak bytes above the allocation before it, carry bytes per row) of a fresh state's step at `rows`, lr 0."""
    import torch

    from hrm.training.step import train_step

    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    state = make_state(rows)
    part = {k: v[:rows].to(device) for k, v in batch.items()}
    train_step(state, part, global_batch_size=global_batch_size, lr_for=lambda step, base: 0.0)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline, carry_bytes_per_row(state.module, part)


def measure_cuda_step(
    make_state: Callable[[int], Any], batch: dict[str, Any], device: Any, global_batch_size: int
) -> StepMemory:
    """Peak allocated bytes of the trainer's step at 1 and 2 rows, extrapolated; `make_state(rows)` builds a
    fresh `TrainState` for `rows`. A throwaway step runs first: the process's first CUDA work pays one-time
    allocations (cuBLAS workspaces, pools) that would shrink the bytes per example. If 2 rows run out of
    memory, the 1-row step alone gives the plan (1)."""
    import torch

    from hrm.training.step import TrainingDiverged

    peaks: list[tuple[int, int]] = []  # (peak bytes, carry bytes per row) at 1 and 2 rows
    rows = 1
    try:
        probe_step(make_state, batch, 1, device, global_batch_size)  # warm-up: its figures are dropped
        for rows in PROBE_ROWS:
            peaks.append(probe_step(make_state, batch, rows, device, global_batch_size))
    except torch.cuda.OutOfMemoryError:
        if not peaks:
            raise UserError(
                "CUDA ran out of memory in the memory probe's step at 1 row, before training: not even micro-batch "
                "1 fits; set train.activation_checkpointing=true, or use a smaller model or a larger GPU"
            ) from None
        (peak, carry_row), *_ = peaks
        method = "measured: the trainer's step at 1 row after a warm-up step (2 rows ran out of memory)"
        return StepMemory(0, peak, carry_row, method, max_micro=1)
    except TrainingDiverged as err:
        raise ProbeFailed(
            f"memory probe: its trial step at {rows} row{'s' if rows > 1 else ''} before training (initial "
            f"weights, lr 0) gave non-finite values: {err.culprit}. The model cannot run as configured; this "
            "is not the run diverging: check arch.forward_dtype and arch.loss (hrm doctor runs the same step)"
        ) from None
    finally:
        torch.cuda.empty_cache()
    (peak_1, _), (peak_2, carry_row) = peaks
    per_example = max(peak_2 - peak_1, 1)
    method = (
        "measured: max_memory_allocated of the trainer's step at 1 and 2 rows after a warm-up, linear in rows"
    )
    return StepMemory(peak_1 - per_example, per_example, carry_row, method)


def plan(
    global_batch: int,
    world_size: int,
    configured_micro: int | None,
    memory: StepMemory | None,
    free_bytes: int | None,
    total_bytes: int | None,
) -> MemoryPlan:
    """The micro-batch: the configured one (refused if it cannot fit) or the largest divisor that fits."""
    share = global_batch // world_size
    budget = int(free_bytes * MEMORY_HEADROOM) if free_bytes is not None else None
    micro = configured_micro or share
    if memory is not None and budget is not None:
        largest = largest_fitting(share, memory, budget)
        usable = f"{gib(budget)} usable ({MEMORY_HEADROOM:.0%} of {gib(free_bytes or 0)} free)"
        if largest == 0:
            raise UserError(
                f"not even a micro-batch of 1 fits: a step needs ~{gib(memory.peak(share, 1))} with "
                f"{share} rows of ACT carry, {usable}; lower train.global_batch_size or use more GPUs"
            )
        if configured_micro is not None and configured_micro > largest:
            raise UserError(
                f"params.yaml: train.micro_batch_size {configured_micro} does not fit: it needs "
                f"~{gib(memory.peak(share, configured_micro))}, {usable}; the largest that fits is {largest} "
                "(or set auto)"
            )
        micro = configured_micro or largest
    return MemoryPlan(global_batch, world_size, share, micro, memory, total_bytes)


def first_batch(dataset: Any, rows: int) -> dict[str, Any]:
    """The dataset's first rows as a training batch (shapes for measuring a step)."""
    return dataset.rows(0, min(rows, dataset.num_examples), pad_to=rows)


def plan_micro_batch(
    arch: dict[str, Any],
    metadata: Any,
    config: Any,
    world_size: int,
    device: Any,
    configured_micro: int | None,
    dataset: Any,
) -> MemoryPlan:
    """The trainer's plan: measured on CUDA, the whole share (or the configured micro-batch) elsewhere."""
    if device.type != "cuda":
        return plan(config.global_batch_size, world_size, configured_micro, None, None, None)
    import torch

    from hrm.training.state import new_state

    def make_state(rows: int) -> Any:
        return new_state(arch, metadata, config, rows, device)  # the run's state, EMA copy included

    batch = first_batch(dataset, max(PROBE_ROWS))
    memory = measure_cuda_step(make_state, batch, device, config.global_batch_size)
    free, total = torch.cuda.mem_get_info(device)
    return plan(config.global_batch_size, world_size, configured_micro, memory, free, total)


def oom_message(micro_batch: int, checkpoint: Any) -> str:
    """What to do after CUDA ran out of memory mid-run."""
    smaller = max((d for d in divisors(micro_batch) if d < micro_batch), default=1)
    return (
        f"CUDA ran out of memory at micro-batch {micro_batch}; try train.micro_batch_size={smaller} "
        f"(dvc exp run -S train.micro_batch_size={smaller}). Last good checkpoint: {checkpoint or 'none yet'}; "
        "resuming from it with another micro-batch gives the same run."
    )
