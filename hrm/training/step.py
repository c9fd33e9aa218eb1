"""One training step and the evaluation loop, as HRM's pretrain.py defines them, with divergence checks."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hrm.evaluation.metrics import HEAD_METRICS
from hrm.io import UserError
from hrm.training.state import TrainState

if TYPE_CHECKING:
    from hrm.optim import LrSchedule

GRAD_BUCKET_BYTES = (
    25 * 2**20
)  # dense gradients all-reduced in flat buckets of up to this (DDP's default cap)


class TrainingDiverged(UserError):
    """Loss or gradients became NaN/inf; the run stops, the last good checkpoint stays as it is."""

    def __init__(self, message: str, culprit: str = ""):
        super().__init__(message)
        self.culprit = culprit  # which tensor, with its first bad values


@dataclass
class StepResult:
    metrics: dict[str, float]  # train/<name> values (rank 0 has the reduced ones; others get the same)
    stop_requested: bool  # some rank received SIGINT/SIGTERM


def reduce_dtype(device: Any) -> Any:
    """float64 for metric sums (exact counts); Apple MPS has none: float32."""
    import torch

    return torch.float32 if device.type == "mps" else torch.float64


def forward_backward(
    head: Any, carry: Any, batch: dict[str, Any], draws: dict[str, Any], *, global_batch_size: int
) -> tuple[Any, Any, dict[str, Any]]:
    """One ACT segment and the backward of loss / global batch; (new carry, loss sum, metric sums). hrm doctor
    sizes and times this call."""
    carry, loss, metrics, _, _ = head(carry=carry, batch=batch, draws=draws)
    (loss / global_batch_size).backward()
    return carry, loss.detach(), metrics


def first_nonfinite(state: TrainState, loss: Any) -> str:
    """This rank's first non-finite tensor (the loss, else a gradient by name) with its first bad values."""
    import torch

    if not torch.isfinite(loss).all():
        return f"the loss is {loss.item()}"
    grads = [(name, p.grad) for name, p in state.module.named_parameters() if p.grad is not None]
    if "puzzle_emb" in state.optimizers:
        embedding = state.optimizers["puzzle_emb"].embedding
        where = next(name for name, m in state.module.named_modules() if m is embedding)
        grads += [(f"{where}.local_weights", grad) for grad in sparse_gradients(state)]
    bad = next(((name, g) for name, g in grads if not torch.isfinite(g).all()), None)
    if bad is None:
        return "a loss or gradient on another rank"
    name, grad = bad
    where = (~torch.isfinite(grad)).nonzero()
    first = ", ".join(f"{row.tolist()} = {grad[tuple(row)].item()}" for row in where[:3])
    return f"the gradient of {name} has {len(where)} of {grad.numel()} values non-finite, first {first}"


def train_step(
    state: TrainState,
    batch: dict[str, Any],
    *,
    schedule: LrSchedule,
    global_batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    micro_batch_size: int | None = None,
    stop_requested: bool = False,
) -> StepResult:
    """One ACT segment on this rank's rows, as HRM's train_batch: forward, loss/B backward, all-reduce, each
    optimizer at its lr for this step, zero. With `micro_batch_size` below the rank's rows, micro-batches (each
    on its rows of the carry) accumulate gradients before the one optimizer step: one big batch's computation
    (up to float summation order)."""
    from hrm.models import normalize_metrics

    state.step += 1
    local = batch["inputs"].shape[0]
    micro = micro_batch_size or local
    if local % micro:
        raise UserError(f"micro-batch {micro} does not divide this process's batch of {local} rows")
    if state.carry is None:
        state.carry = state.module.initial_carry(batch)
    # The halting draws of the whole global batch, this rank's rows: a row's numbers ignore the split.
    draws = (
        state.module.draw_row_randomness(global_batch_size, state.generator) if state.module.training else {}
    )
    draws = draws_on(
        batch["inputs"].device, {k: v[rank * local : (rank + 1) * local] for k, v in draws.items()}
    )
    loss, metrics = accumulate(state, batch, micro, draws, global_batch_size)
    names = [k for k in HEAD_METRICS if k in metrics]
    diverged, stop, loss_sum, *sums = reduce_step(state, loss, metrics, names, stop_requested, world_size)
    if diverged > 0:
        culprit = first_nonfinite(state, loss)
        for optimizer in state.optimizers.values():
            optimizer.zero_grad()
        raise TrainingDiverged(
            f"training diverged at step {state.step}: {culprit}. Nothing after the last checkpoint was saved; "
            "lower train.lr, check the data, or delete the checkpoint folder to start over.",
            culprit,
        )
    lrs = {}
    for name, optimizer in state.optimizers.items():
        lrs[name] = schedule.lr(state.step, state.base_lrs[name])
        for group in optimizer.param_groups:
            group["lr"] = lrs[name]
        optimizer.step()
        optimizer.zero_grad()
    if state.ema is not None:
        state.ema.update(state.module)
    reduced = dict(zip(names, sums, strict=True))
    out = normalize_metrics(reduced, global_batch_size)
    out["count"] = reduced.get("count", 0.0)
    out["loss"] = loss_sum / global_batch_size
    out["lr"] = lrs["dense"]  # HRM logs the lr of its last optimizer, the dense one
    return StepResult(metrics=out, stop_requested=stop > 0)


def draws_on(device: Any, draws: dict[str, Any]) -> dict[str, Any]:
    """This rank's halting draws where the forward uses them. They are drawn from the run's CPU generator
    (the same numbers on every device, and its state is what checkpoints keep); on CUDA they are copied once
    per step, from pinned memory and without blocking, instead of from pageable memory inside the forward,
    where each copy waits for the GPU. Elsewhere they stay as they are."""
    if device.type != "cuda":
        return draws
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in draws.items()}


def accumulate(
    state: TrainState, batch: dict[str, Any], micro: int, draws: dict[str, Any], global_batch_size: int
) -> tuple[Any, dict[str, Any]]:
    """Forward and backward of each micro-batch in turn, each on its rows of the carry; (loss sum, metric sums).
    The puzzle embedding's sign-SGD sets each micro-batch's gradient rows aside (the next backward overwrites
    them)."""
    local = batch["inputs"].shape[0]
    sparse = state.optimizers.get("puzzle_emb")
    loss: Any = 0.0
    metrics: dict[str, Any] = {}
    for start in range(0, local, micro):
        stop = start + micro
        whole = start == 0 and stop == local
        part = batch if whole else {k: v[start:stop] for k, v in batch.items()}
        carry = state.carry if whole else state.carry.rows(start, stop)
        part_draws = {k: v[start:stop] for k, v in draws.items()}
        new_carry, part_loss, part_metrics = forward_backward(
            state.head, carry, part, part_draws, global_batch_size=global_batch_size
        )
        if whole:
            state.carry = new_carry
        else:
            state.carry.put_rows(start, new_carry)
        if sparse is not None:
            sparse.collect_micro_batch()
        loss = loss + part_loss
        metrics = {k: metrics.get(k, 0.0) + v for k, v in part_metrics.items()}
    return loss, metrics


def reduce_step(
    state: TrainState,
    loss: Any,
    metrics: dict[str, Any],
    names: list[str],
    stop_requested: bool,
    world_size: int,
) -> list[float]:
    """All-reduce the dense gradients (sign-SGD gathers its own), then in one collective and one sync [any
    non-finite, stop requested, loss sum, *metric sums `names`]."""
    import torch
    import torch.distributed as dist

    dense_grads = [p.grad for p in state.module.parameters() if p.requires_grad and p.grad is not None]
    if world_size > 1:
        all_reduce_buckets(dense_grads)
    device = loss.device
    dtype = reduce_dtype(device)
    nonfinite = (~torch.isfinite(loss)).any()
    for grad in dense_grads + sparse_gradients(state):
        nonfinite = nonfinite | (~torch.isfinite(grad)).any()
    packed = torch.stack(
        [
            nonfinite.to(dtype),
            torch.tensor(1.0 if stop_requested else 0.0, dtype=dtype, device=device),
            loss.to(dtype),
            *[metrics[k].detach().to(device=device, dtype=dtype) for k in names],
        ]
    )
    if world_size > 1:
        dist.all_reduce(packed)
    return packed.cpu().tolist()


def sparse_gradients(state: TrainState) -> list[Any]:
    """The puzzle embedding's gradient rows of this step, as its sign-SGD holds them ([] without one)."""
    sparse = state.optimizers.get("puzzle_emb")
    return [] if sparse is None else sparse.gradients()


def gradient_buckets(grads: list[Any], bucket_bytes: int = GRAD_BUCKET_BYTES) -> list[list[Any]]:
    """`grads` in order, cut into runs of one dtype and at most `bucket_bytes` each (a larger tensor alone)."""
    buckets: list[list[Any]] = []
    size = 0
    for grad in grads:
        nbytes = grad.numel() * grad.element_size()
        if not buckets or buckets[-1][0].dtype != grad.dtype or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += nbytes
    return buckets


def all_reduce_buckets(grads: list[Any], bucket_bytes: int = GRAD_BUCKET_BYTES) -> None:
    """Sum `grads` over the ranks in place, one collective per flat bucket instead of one per tensor (a
    launch and a round trip each: hundreds of small ones under NCCL). Each element is summed over the same
    ranks as before; only its position in the buffer the collective cuts into chunks changes."""
    import torch
    import torch.distributed as dist

    for bucket in gradient_buckets(grads, bucket_bytes):
        if len(bucket) == 1:
            dist.all_reduce(bucket[0])
            continue
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        dist.all_reduce(flat)
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset : offset + grad.numel()].view(grad.shape))
            offset += grad.numel()


def evaluate(
    state: TrainState,
    batches: Iterable[dict[str, Any]],
    *,
    device: Any,
    world_size: int = 1,
    route_task: Any = None,
) -> dict[str, float]:
    """The evaluation loop over every test batch (EMA weights when kept); the last segment's metric sums over
    count. With `route_task` (routing.json) predictions are scored as routes too (SUMMED_ROUTE_METRICS: hrm
    compare's curves)."""
    import torch

    from hrm.evaluation.loop import run_batches
    from hrm.evaluation.metrics import SUMMED_ROUTE_METRICS, route_sums

    module = state.module
    was_training = module.training
    module.eval()
    totals: torch.Tensor | None = None
    names: list[str] = []
    try:
        with state.ema.applied(module) if state.ema is not None else nullcontext():
            for batch, segments in run_batches(state.head, batches, module.model.eval_segments, device):
                metrics, outputs = segments[-1]
                if route_task is not None:
                    sums = route_sums(batch, outputs["preds"], route_task)
                    metrics = {**metrics, **{k: torch.tensor(v) for k, v in sums.items()}}
                if totals is None:
                    names = [
                        k for k in (*HEAD_METRICS[:-1], *SUMMED_ROUTE_METRICS) if k in metrics
                    ]  # no q_continue
                    totals = torch.zeros(len(names), dtype=reduce_dtype(torch.device(device)), device=device)
                totals += torch.stack([metrics[k].to(totals.dtype).to(device) for k in names])
    finally:
        module.train(was_training)
    if totals is None:
        return {}
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
    from hrm.models import normalize_metrics

    return normalize_metrics(dict(zip(names, totals.cpu().tolist(), strict=True)))
