"""The trainer's step traced on PyTorch's "meta" device (shapes, no compute): the memory of one step at a
`Workload`'s shapes, where it cannot be measured (MPS, a CPU without /proc: `hrm.training.memory.step_memory`)
and for `hrm doctor`'s GPU table (`hrm.planning`). Model, batch and step are the trainer's (`build_model`,
`ModelConfig`, `forward_backward`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from hrm.training.data import DatasetMetadata

ADAM_STATE_COPIES = 2  # AdamATan2 keeps exp_avg and exp_avg_sq, fp32, one each per parameter


@dataclass(frozen=True)
class StepMemory:
    """Peak bytes of one training step as `fixed + per_example * micro + carry_per_row * (share - micro)`."""

    fixed: int
    per_example: int
    carry_per_row: int
    method: str
    max_micro: int | None = None  # the most rows a probe ran before CUDA ran out (None: no limit seen)
    step_seconds: tuple[float, ...] = ()  # wall time of the probe's steps at PROBE_ROWS (after the warm-up)

    def peak(self, share: int, micro: int) -> int:
        return self.fixed + self.per_example * micro + self.carry_per_row * (share - micro)


def carry_bytes_per_row(head: Any, batch: dict[str, Any]) -> int:
    """Bytes of one row of the ACT carry (state, step count, halted flag, the row's example)."""
    import torch

    carry = head.initial_carry({k: v[:1] for k, v in batch.items()})
    return sum(t.numel() * t.element_size() for t in carry.to_state().values() if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class Workload:
    """An `arch` section at the dataset's sizes (`scaled_down`: doctor's --quick copy)."""

    arch: dict[str, Any]
    metadata: DatasetMetadata
    scaled_down: bool = False

    @property
    def seq_len(self) -> int:
        return self.metadata.seq_len

    def with_seq_len(self, seq_len: int) -> Workload:
        return dataclasses.replace(self, metadata=dataclasses.replace(self.metadata, seq_len=seq_len))


def model_config(work: Workload, dtype_name: str) -> Any:
    """The `ModelConfig` (one row, on meta) the trainer would build: every arch default lives there."""
    from hrm.models import ModelConfig

    meta = work.metadata
    return ModelConfig.from_arch(
        dict(work.arch, forward_dtype=dtype_name),
        seq_len=meta.seq_len,
        vocab_size=meta.vocab_size,
        num_puzzle_identifiers=meta.num_puzzle_identifiers,
        batch_size=1,
        device="meta",
    )


def build(work: Workload, rows: int, device: str, dtype_name: str, seed: int) -> Any:
    """The trainer's model (`build_model`) at the workload's shapes and dtype."""
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
    """The loss of the trainer's forward and backward of one ACT segment (training mode, target-Q pass, halting
    draws from a seeded CPU generator)."""
    import torch

    from hrm.training.step import forward_backward

    head.train()
    generator = torch.Generator().manual_seed(seed)
    rows = batch["inputs"].shape[0]
    draws = head.draw_row_randomness(rows, generator)
    carry = head.initial_carry(batch)
    return forward_backward(head, carry, batch, draws, global_batch_size=rows)[1]


def saved_step_bytes(
    work: Workload,
    device: str,
    dtype_name: str,
    batch_size: int,
    seed: int,
    fused_attention: bool,
    checkpointing: bool = False,
) -> tuple[int, int]:
    """(peak bytes of a training step, parameter bytes): parameters, buffers, gradients and each storage autograd
    saves, once. On meta SDPA saves the seq x seq attention matrix of its math path; `fused_attention` counts the
    fused kernel's output and logsumexp instead. Transient workspace is not counted (MEMORY_HEADROOM)."""
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
    """The step traced on meta at 1 and 2 rows, attention as `device`'s SDPA pick ("gpu": fused, as recent GPUs
    pick), + AdamATan2's state, the EMA copy under train.ema and the ACT carry per row."""
    from hrm.sdpa import default_pick

    model = model_config(work, dtype_name)
    heads, head_dim = model.num_heads, model.hidden_size // model.num_heads
    where = "a GPU" if device == "gpu" else device
    pick = "flash" if device == "gpu" else default_pick(device, dtype_name, heads, head_dim)
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
