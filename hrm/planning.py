"""What `hrm doctor` estimates rather than measures: the trainer's step memory traced on PyTorch's "meta" device
(shapes, no compute), the trainer's memory plan per GPU size, and run hours at an assumed MFU (hrm.models.flops).
Model, batch and step are the trainer's (`build_model`, `ModelConfig`, `forward_backward`) at a `Workload`'s shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hrm.io import UserError
from hrm.training.memory import StepMemory
from hrm.training.trace import (  # the trainer's step traced on meta (its own module: the trainer uses it too)
    Workload,
    random_batch,
)

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
ASSUMED_MFU = 0.30  # model FLOPs utilisation assumed for the estimate (to be measured: bench/gpu_check.py)


def trainer_plan(work: Workload, train: Any, world_size: int, device: str, micro: int | None) -> Any:
    """The trainer's plan (`plan_micro_batch`: its state, its step at 1 and 2 rows, the memory available) on a
    two-row stand-in split of the workload's shapes, written by convert's writer. UserError when the plan
    refuses the batch."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from hrm.data.conversion.convert import hrm_metadata, write_hrm_split
    from hrm.training.data import PuzzleDataset
    from hrm.training.memory import plan_micro_batch

    meta = work.metadata
    tokens = np.random.default_rng(train.seed).integers(1, meta.vocab_size, (2, meta.seq_len))
    ids = np.array([1, min(2, meta.num_puzzle_identifiers - 1)])
    arrays = {"inputs": tokens, "labels": tokens, "puzzle_identifiers": ids, "puzzle_indices": np.arange(3)}
    arrays["group_indices"] = np.array([0, 2])
    with tempfile.TemporaryDirectory() as tmp:
        write_hrm_split(
            Path(tmp) / "train", arrays, hrm_metadata(arrays, meta.vocab_size, meta.num_puzzle_identifiers)
        )
        stand_in = PuzzleDataset(Path(tmp), "train")
        return plan_micro_batch(work.arch, meta, train, world_size, torch.device(device), micro, stand_in)


DURATION_UNITS = (  # (unit, seconds in it, shown in it below this many seconds)
    ("second", 1, 120),
    ("minute", 60, 120 * 60),
    ("hour", 3600, 72 * 3600),
    ("day", 86400, 365 * 86400),
    ("year", 365.25 * 86400, math.inf),
)


def format_duration(seconds: float) -> str:
    """A duration in the unit its size calls for (seconds to years), never rounded down to nothing."""
    unit, size = next((unit, size) for unit, size, below in DURATION_UNITS if seconds < below)
    value = seconds / size
    shown = f"{value:.1g}" if value < 0.1 else f"{value:.1f}" if value < 10 else f"{value:,.0f}"
    return f"{shown} {unit}{'' if shown == '1.0' else 's'}"


TIMING_BUDGET_S = 60.0  # the most `time_micro_batch`'s own steps may take (the paper shape on a 2-core CPU)
TIMING_REPEATS = 2  # timed steps after the warm-up; the fastest counts (one-time costs and noise are slower)


@dataclass(frozen=True)
class StepTime:
    """Seconds of one micro-batch of the plan, and how they were found."""

    seconds: float
    how: str


def timed_steps(work: Workload, train: Any, device: str, rows: int, global_batch: int, repeats: int) -> float:
    """The fastest of `repeats` trainer steps (`train_step` on a fresh `new_state`, lr 0) at `rows`, seconds."""
    import time

    import torch

    from hrm.optim import ZERO_LR
    from hrm.training.state import new_state
    from hrm.training.step import train_step

    torch_device = torch.device(device)
    state = new_state(work.arch, work.metadata, train, rows, torch_device)
    batch = random_batch(work, rows, device, train.seed)
    sync = torch.cuda.synchronize if torch_device.type == "cuda" else lambda device=None: None
    times = []
    for _ in range(repeats):
        sync(torch_device)
        started = time.perf_counter()
        train_step(state, batch, schedule=ZERO_LR, global_batch_size=global_batch)
        sync(torch_device)
        times.append(time.perf_counter() - started)
    return min(times)


def time_micro_batch(work: Workload, train: Any, device: str, plan: Any) -> StepTime:
    """One micro-batch of `plan` timed with the trainer's step at the run's shapes, within TIMING_BUDGET_S: at
    the micro-batch itself where TIMING_REPEATS steps of it fit the budget, else at fewer rows and scaled
    linearly (an upper bound: more rows use the cores better). The memory probe's steps at 1 and 2 rows (in
    `plan.memory.step_seconds`, run after its warm-up) say how long a row takes; without them a 1-row step
    warms up first."""
    from hrm.training.memory import PROBE_ROWS

    micro = plan.micro_batch
    known = dict(zip(PROBE_ROWS, plan.memory.step_seconds if plan.memory else (), strict=False))
    if not known:
        known = {1: timed_steps(work, train, device, 1, plan.global_batch, 1)}  # the warm-up, timed
    rows_known, seconds_known = max(known.items())
    affordable = int(TIMING_BUDGET_S / TIMING_REPEATS / max(seconds_known / rows_known, 1e-9))
    rows = min(micro, affordable)
    if rows <= rows_known and rows < micro:
        how = f"a step of {rows_known} row{'s' if rows_known > 1 else ''} took {seconds_known:.3g} s, x {micro}/"
        return StepTime(
            seconds_known * micro / rows_known, how + f"{rows_known} (linear in rows, an upper bound)"
        )
    seconds = timed_steps(work, train, device, rows, plan.global_batch, TIMING_REPEATS)
    how = f"fastest of {TIMING_REPEATS} trainer steps of {rows} rows after a warm-up"
    if rows == micro:
        return StepTime(seconds, how)
    return StepTime(seconds * micro / rows, how + f", x {micro}/{rows} (linear in rows, an upper bound)")


def matmul_rate(device: str, dtype_name: str, hidden: int) -> float:
    """FLOP/s of a block-sized matmul (1024 tokens x hidden -> 3 hidden) here, best of 3 after a warm-up: the
    most a training step can reach, so time from it is a lower bound."""
    import time

    import torch

    generator = torch.Generator().manual_seed(0)
    dtype, where = getattr(torch, dtype_name), torch.device(device)
    x = torch.randn(1024, hidden, generator=generator).to(where, dtype)
    w = torch.randn(hidden, 3 * hidden, generator=generator).to(where, dtype)
    sync = torch.cuda.synchronize if where.type == "cuda" else lambda device=None: None
    times = []
    for _ in range(4):
        sync(where)
        started = time.perf_counter()
        x @ w
        sync(where)
        times.append(time.perf_counter() - started)
    return 2 * 1024 * hidden * 3 * hidden / max(min(times[1:]), 1e-9)  # times[0]: the warm-up


def gpu_plans(
    memory: StepMemory, global_batch: int, world_size: int, run_flops: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows for --json, table lines): per GPU_TIERS card the trainer's plan (auto micro-batch) with `memory`, and
    the hours of `run_flops` over `world_size` such cards at ASSUMED_MFU."""
    from hrm.training.memory import gib, plan

    share = global_batch // world_size
    rows, lines = [], []
    for size, example, peak in GPU_TIERS:
        hours = run_flops / (world_size * peak * ASSUMED_MFU) / 3600
        row = {"gib": size, "example_gpu": example, "peak_flops": peak, "micro_batch": 0, "hours": hours}
        rows.append(row)
        try:
            micro = plan(global_batch, world_size, None, memory, size * 2**30, size * 2**30).micro_batch
        except UserError:  # not even one row with the carry of the share
            lines.append(f"{size:>3} GiB ({example}): does not fit (even 1 row with the carry of {share})")
            continue
        row.update(micro_batch=micro, accumulation=share // micro, peak_bytes=memory.peak(share, micro))
        lines.append(
            f"{size:>3} GiB ({example}): micro-batch {micro} x {share // micro} accumulation, "
            f"est. peak {gib(memory.peak(share, micro))}, est. {format_duration(hours * 3600)}"
        )
    return rows, lines
