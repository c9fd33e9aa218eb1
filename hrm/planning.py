"""Estimates of a run before it runs: the step memory traced on PyTorch's meta device, and GPU plans.

What `hrm doctor` estimates rather than checks lives here, beside the formulas it uses: the bytes a training
step holds (counted from what autograd saves, on "meta", which computes shapes and nothing else), the
trainer's memory plan (`hrm.training.memory.plan`) applied to GPUs of 8 to 141 GiB, and the hours of a run
at an assumed MFU from `hrm.models.flops`. On CUDA the trainer measures its step instead (memory.py).
The model, its batch and its step are the trainer's: `build_model`, `ModelConfig` and
`hrm.training.step.forward_backward`, at the shapes of a `Workload`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from hrm.io import UserError
from hrm.training.data import DatasetMetadata
from hrm.training.memory import StepMemory

ADAM_STATE_COPIES = 2  # AdamATan2 keeps exp_avg and exp_avg_sq, fp32, one each per parameter
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


@dataclass(frozen=True)
class Workload:
    """A model at a shape: an `arch` section and the dataset's sizes (`scaled_down`: doctor's --quick copy)."""

    arch: dict[str, Any]
    metadata: DatasetMetadata
    scaled_down: bool = False

    @property
    def seq_len(self) -> int:
        return self.metadata.seq_len

    def with_seq_len(self, seq_len: int) -> Workload:
        return dataclasses.replace(self, metadata=dataclasses.replace(self.metadata, seq_len=seq_len))


def model_config(work: Workload, dtype_name: str, rows: int = 1, device: str = "meta") -> Any:
    """The `ModelConfig` the trainer would build: every arch default lives there."""
    from hrm.models import ModelConfig

    meta = work.metadata
    return ModelConfig.from_arch(
        dict(work.arch, forward_dtype=dtype_name),
        seq_len=meta.seq_len,
        vocab_size=meta.vocab_size,
        num_puzzle_identifiers=meta.num_puzzle_identifiers,
        batch_size=rows,
        device=device,
    )


def build(work: Workload, rows: int, device: str, dtype_name: str, seed: int) -> Any:
    """The trainer's model (`hrm.models.build_model`) at the workload's shapes and dtype."""
    from hrm.models import build_model

    return build_model(dict(work.arch, forward_dtype=dtype_name), work.metadata, rows, device, seed)


def random_batch(work: Workload, rows: int, device: str, seed: int) -> dict[str, Any]:
    """A batch in the model's format from a seeded generator (tokens of the real vocabulary)."""
    import torch

    meta, generator = work.metadata, torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, meta.vocab_size - 1, (rows, meta.seq_len), generator=generator)
    labels = torch.randint(1, meta.vocab_size, (rows, meta.seq_len), generator=generator)
    ids = torch.randint(1, meta.num_puzzle_identifiers, (rows,), generator=generator)
    batch = {"inputs": inputs.to(torch.int32), "labels": labels, "puzzle_identifiers": ids.to(torch.int32)}
    return {k: v.to(torch.device(device)) for k, v in batch.items()}


def segment_forward_backward(head: Any, batch: dict[str, Any], seed: int) -> Any:
    """The trainer's forward and backward of one ACT segment (`hrm.training.step.forward_backward`): training
    mode, target-Q pass included, halting draws from a seeded CPU generator as the trainer's. The loss."""
    import torch

    from hrm.training.step import forward_backward

    head.train()
    generator = torch.Generator().manual_seed(seed)
    rows = batch["inputs"].shape[0]
    draws = head.draw_row_randomness(rows, generator)
    carry = head.initial_carry(batch)
    return forward_backward(head, carry, batch, global_batch_size=rows, generator=generator, draws=draws)[1]


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

    from hrm.training.state import set_activation_checkpointing

    head = build(work, batch_size, device, dtype_name, seed)
    set_activation_checkpointing(head, checkpointing)  # saved: each block's input, not its insides
    params_bytes = sum(p.numel() * p.element_size() for p in head.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in head.buffers())
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
    total_len, head_dim = head.config.total_len, head.config.hidden_size // head.config.num_heads
    element = torch.empty((), dtype=head.config.forward_dtype).element_size()
    activations = 0
    for nbytes, shape in saved.values():
        if fused_attention and on_meta and len(shape) >= 2 and shape[-1] == shape[-2] == total_len:
            rows = math.prod(shape[:-1])  # batch x heads x queries
            activations += rows * head_dim * element + rows * 4  # fused output + fp32 logsumexp
        else:
            activations += nbytes
    return params_bytes + buffer_bytes + params_bytes + activations, params_bytes


def traced_memory(work: Workload, train: Any, dtype_name: str, device: str) -> StepMemory:
    """The trainer's step memory traced on the meta device at 1 and 2 rows (linear in the rows), attention as
    `device`'s SDPA pick ("gpu": a fused kernel, as every recent GPU picks), + AdamATan2's state (and the EMA
    copy under train.ema) + the ACT carry per row. `train`: the run's TrainConfig."""
    from hrm.sdpa import default_pick
    from hrm.training.memory import carry_bytes_per_row

    model = model_config(work, dtype_name)
    if device == "gpu":
        pick, where = "flash", "a GPU"
    else:
        pick, where = (
            default_pick(device, dtype_name, model.num_heads, model.hidden_size // model.num_heads),
            device,
        )
    fused, seed = pick not in (None, "math"), train.seed
    (first, params_bytes), (second, _) = [
        saved_step_bytes(work, "meta", dtype_name, rows, seed, fused, train.activation_checkpointing)
        for rows in (1, 2)
    ]
    per_example = second - first
    copies = ADAM_STATE_COPIES + (1 if train.ema else 0)
    head = build(work, 1, "meta", dtype_name, seed)
    carry_row = carry_bytes_per_row(head, random_batch(work, 1, "meta", seed))
    method = (
        f"traced on the meta device (no compute): params + grads + autograd-saved tensors, attention as "
        f"{where}'s SDPA pick ({pick or 'unknown'}); transient workspace not counted; + AdamATan2 state "
        f"(2 x params, analytic){' + EMA copy' if train.ema else ''}; linear in the batch"
    )
    return StepMemory(first - per_example + copies * params_bytes, per_example, carry_row, method)


def measured_plan(work: Workload, train: Any, world_size: int, device: str, micro: int | None) -> Any:
    """The trainer's own memory plan on CUDA (`hrm.training.memory.plan_micro_batch`: its state, EMA included,
    its step at 1 and 2 rows) on a two-row stand-in split of the workload's shapes, written by the one writer
    of the layout. UserError when the plan refuses the batch."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from hrm.data.conversion.convert import hrm_metadata, write_hrm_split
    from hrm.training.data import PuzzleDataset
    from hrm.training.memory import plan_micro_batch

    meta = work.metadata
    rows = np.random.default_rng(train.seed).integers(1, meta.vocab_size, (2, meta.seq_len))
    arrays = {
        "inputs": rows,
        "labels": rows,
        "puzzle_identifiers": np.array([1, min(2, meta.num_puzzle_identifiers - 1)]),
    }
    arrays |= {"puzzle_indices": np.arange(3), "group_indices": np.array([0, 2])}
    with tempfile.TemporaryDirectory() as tmp:
        write_hrm_split(
            Path(tmp) / "train", arrays, hrm_metadata(arrays, meta.vocab_size, meta.num_puzzle_identifiers)
        )
        stand_in = PuzzleDataset(Path(tmp), "train")
        plan = plan_micro_batch(work.arch, meta, train, world_size, torch.device(device), micro, stand_in)
    method = plan.memory.method + " (the trainer's plan: optimizer state included)"
    return dataclasses.replace(plan, memory=dataclasses.replace(plan.memory, method=method))


def gpu_plans(
    memory: StepMemory, global_batch: int, world_size: int, run_flops: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per GPU_TIERS card: the trainer's plan (auto micro-batch) with `memory`, and the hours of `run_flops`
    spread over `world_size` such cards at ASSUMED_MFU. (rows for --json, lines for the table)."""
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
            f"est. peak {gib(memory.peak(share, micro))}, est. {hours:,.0f} h"
        )
    return rows, lines


def device_memory(device: str) -> tuple[int | None, int | None, str]:
    """(free bytes, total bytes, what was read) of the memory a run on `device` budgets on."""
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
