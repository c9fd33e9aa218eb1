"""One training step and the evaluation loop, as HRM's pretrain.py defines them, with divergence checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from hrm.io import UserError

METRIC_KEYS = (
    "count",
    "accuracy",
    "exact_accuracy",
    "q_halt_accuracy",
    "steps",
    "lm_loss",
    "q_halt_loss",
    "q_continue_loss",
)
MAX_EVAL_SEGMENTS = 100_000  # a model whose eval never halts is a bug; fail instead of spinning


class TrainingDiverged(UserError):
    """Loss or gradients became NaN/inf; the run stops and the last good checkpoint stays as it is."""


@dataclass
class TrainState:
    """What a step reads and changes; `head` may be the compiled wrapper of `module`."""

    head: Any
    module: Any
    optimizers: list[Any]
    base_lrs: list[float]
    generator: Any  # torch.Generator for the model's own draws (halt exploration)
    step: int = 0
    carry: Any = None
    ema: Any = None  # hrm.training.ema.WeightEMA when train.ema: updated after each step, used to evaluate
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    metrics: dict[str, float]  # train/<name> values (rank 0 has the reduced ones; others get the same)
    stop_requested: bool  # some rank received SIGINT/SIGTERM


def reduce_dtype(device: Any) -> Any:
    """float64 for metric sums (exact counts), float32 where the backend has no float64 (Apple MPS)."""
    import torch

    return torch.float32 if device.type == "mps" else torch.float64


def gradient_tensors(module: Any) -> tuple[list[Any], list[Any]]:
    """(dense parameters, gradient-carrying buffers such as the sparse puzzle embedding's local copy).

    Only the first are all-reduced here: the sparse optimizer gathers its rows and ids across ranks itself.
    """
    dense = [p for p in module.parameters() if p.requires_grad]
    sparse = [b for b in module.buffers() if b.requires_grad]
    return dense, sparse


def train_step(
    state: TrainState,
    batch: dict[str, Any],
    *,
    global_batch_size: int,
    lr_for: Callable[[int, float], float],
    world_size: int = 1,
    stop_requested: bool = False,
) -> StepResult:
    """One ACT segment on this rank's rows; HRM's order: forward, loss/B backward, all-reduce, lr, step, zero."""
    import torch

    state.step += 1
    if state.carry is None:
        state.carry = state.module.initial_carry(batch)
    state.carry, loss, metrics, _, _ = state.head(
        carry=state.carry, batch=batch, return_keys=[], generator=state.generator
    )
    (loss / global_batch_size).backward()

    dense, sparse = gradient_tensors(state.module)
    dense_grads = [t.grad for t in dense if t.grad is not None]
    if world_size > 1:
        import torch.distributed as dist

        for grad in dense_grads:
            dist.all_reduce(grad)
    grads = dense_grads + [t.grad for t in sparse if t.grad is not None]

    # One collective and one device sync for divergence, stop signal and metrics: every rank learns all three.
    device = loss.device
    dtype = reduce_dtype(device)
    nonfinite = (~torch.isfinite(loss.detach())).any()
    for grad in grads:
        nonfinite = nonfinite | (~torch.isfinite(grad)).any()
    names = [k for k in METRIC_KEYS if k in metrics]
    packed = torch.stack(
        [
            nonfinite.to(dtype),
            torch.tensor(1.0 if stop_requested else 0.0, dtype=dtype, device=device),
            loss.detach().to(dtype),
            *[metrics[k].detach().to(device=device, dtype=dtype) for k in names],
        ]
    )
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(packed)
    packed = packed.cpu().tolist()
    if packed[0] > 0:
        for optimizer in state.optimizers:
            optimizer.zero_grad()
        raise TrainingDiverged(
            f"training diverged at step {state.step}: the loss or a gradient is NaN/inf "
            f"(loss on this rank: {float(loss.detach())}). Nothing after the last checkpoint was saved; "
            "lower train.lr, check the data, or delete the checkpoint folder to start over."
        )

    lr_this_step = 0.0
    for optimizer, base_lr in zip(state.optimizers, state.base_lrs, strict=True):
        lr_this_step = lr_for(state.step, base_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr_this_step
        optimizer.step()
        optimizer.zero_grad()
    if state.ema is not None:
        state.ema.update(state.module)

    from hrm.models import normalize_metrics

    reduced = dict(zip(names, packed[3:], strict=True))
    out = normalize_metrics(reduced, global_batch_size)
    out["count"] = reduced.get("count", 0.0)
    out["loss"] = packed[2] / global_batch_size
    out["lr"] = lr_this_step  # HRM logs the lr of its last optimizer (the dense one)
    return StepResult(metrics=out, stop_requested=packed[1] > 0)


def evaluate(
    state: TrainState,
    batches: Iterable[dict[str, Any]],
    *,
    device: Any,
    world_size: int = 1,
) -> dict[str, float]:
    """Every test batch run until all rows halted; the last segment's metric sums, summed, divided by count."""
    import torch

    module = state.module
    was_training = module.training
    module.eval()
    totals: torch.Tensor | None = None
    names: list[str] = []
    try:
        with state.ema.applied(module) if state.ema is not None else nullcontext(), torch.inference_mode():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                carry = module.initial_carry(batch)
                for _ in range(MAX_EVAL_SEGMENTS):
                    carry, _, metrics, _, all_halted = state.head(carry=carry, batch=batch, return_keys=[])
                    if bool(all_halted):
                        break
                else:
                    raise RuntimeError(f"evaluation did not halt within {MAX_EVAL_SEGMENTS} segments")
                if totals is None:
                    names = [k for k in METRIC_KEYS if k in metrics and k != "q_continue_loss"]
                    totals = torch.zeros(len(names), dtype=reduce_dtype(torch.device(device)), device=device)
                totals += torch.stack([metrics[k].to(totals.dtype) for k in names])
    finally:
        module.train(was_training)
    if totals is None:
        return {}
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
    from hrm.models import normalize_metrics

    return normalize_metrics(dict(zip(names, totals.cpu().tolist(), strict=True)))
