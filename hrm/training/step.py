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
ROUTE_KEYS = ("route_valid_rate", "route_optimal_rate")  # eval only, with a route task: sums / count
MAX_EVAL_SEGMENTS = 100_000  # a model whose eval never halts is a bug; fail instead of spinning


class TrainingDiverged(UserError):
    """Loss or gradients became NaN/inf (the message names the step, the tensor and its first bad values); the
    run stops and the last good checkpoint stays as it is."""

    def __init__(self, message: str, culprit: str = ""):
        super().__init__(message)
        self.culprit = culprit  # which tensor, with its first bad values


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


def carry_rows(carry: Any, start: int, stop: int) -> Any:
    """Rows [start, stop) of an ACT carry (views): a micro-batch slot's own part of the process's carry."""
    import dataclasses

    import torch

    def rows(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[start:stop]
        if isinstance(value, dict):
            return {k: rows(v) for k, v in value.items()}
        return value

    return dataclasses.replace(
        carry, **{f.name: rows(getattr(carry, f.name)) for f in dataclasses.fields(carry)}
    )


def put_carry_rows(carry: Any, start: int, part: Any) -> None:
    """Write a micro-batch's new carry back into rows [start, start + len) of the process's carry."""
    import dataclasses

    import torch

    def put(target: Any, value: Any) -> None:
        if isinstance(target, torch.Tensor):
            target[start : start + value.shape[0]].copy_(value)
        elif isinstance(target, dict):
            for key, item in value.items():
                put(target[key], item)

    for f in dataclasses.fields(carry):
        put(getattr(carry, f.name), getattr(part, f.name))


def forward_backward(
    head: Any,
    carry: Any,
    batch: dict[str, Any],
    *,
    global_batch_size: int,
    generator: Any = None,
    draws: dict[str, Any] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """One ACT segment on one (micro-)batch and its backward with the loss scaled by the global batch.

    Returns (new carry, loss sum over the rows (detached), metric sums). Gradients accumulate into `.grad`,
    so micro-batches add up to the gradient of the whole batch. `hrm doctor` sizes and times this call.
    """
    carry, loss, metrics, _, _ = head(
        carry=carry, batch=batch, return_keys=[], generator=generator, draws=draws
    )
    (loss / global_batch_size).backward()
    return carry, loss.detach(), metrics


def step_draws(state: TrainState, global_batch_size: int, start: int, stop: int) -> dict[str, Any]:
    """This process's rows [start, stop) of the per-row draws for the whole global batch (drawn once a step).

    Every process draws the same global numbers from the same generator, so the rows a process and its
    micro-batches see do not depend on the number of processes or micro-batches.
    """
    draw = getattr(state.module, "draw_row_randomness", None)
    if draw is None or not state.module.training:
        return {}
    return {k: v[start:stop] for k, v in draw(global_batch_size, state.generator).items()}


def bad_values(tensor: Any, shown: int = 3) -> str:
    """How many entries are NaN/inf and the first few with their indices (what a divergence report shows)."""
    import torch

    bad = (~torch.isfinite(tensor)).nonzero()
    first = ", ".join(f"{row.tolist()} = {tensor[tuple(row)].item()}" for row in bad[:shown])
    return f"{len(bad)} of {tensor.numel()} values non-finite, first {first}"


def first_nonfinite(module: Any, loss: Any, sparse_optimizers: list[Any]) -> str:
    """The first non-finite tensor on this rank: the loss, else a gradient by parameter name (the puzzle
    embedding's rows by its buffer's name); "another rank" when this one's are all finite."""
    import torch

    if not torch.isfinite(loss).all():
        return f"the loss is {loss.item()}"
    for name, param in module.named_parameters():
        if param.grad is not None and not torch.isfinite(param.grad).all():
            return f"the gradient of {name} has {bad_values(param.grad)}"
    names = {id(m): n for n, m in module.named_modules()}
    for optimizer in sparse_optimizers:
        for grad, _ in optimizer.pending:
            if not torch.isfinite(grad).all():
                return (
                    f"the gradient of {names[id(optimizer.embedding)]}.local_weights has {bad_values(grad)}"
                )
    return "the loss or a gradient is NaN/inf on another rank"


def train_step(
    state: TrainState,
    batch: dict[str, Any],
    *,
    global_batch_size: int,
    lr_for: Callable[[int, float], float],
    world_size: int = 1,
    rank: int = 0,
    micro_batch_size: int | None = None,
    stop_requested: bool = False,
) -> StepResult:
    """One ACT segment on this rank's rows, as HRM's: forward, loss/B backward, all-reduce, lr, step, zero.

    With `micro_batch_size` below the rank's rows, the rows run as consecutive micro-batches whose gradients
    accumulate before the one optimizer step; each keeps its own rows of the ACT carry, so the result is the
    computation of one big batch (up to float summation order).
    """
    import torch

    from hrm.optim import SparseSignSGD

    state.step += 1
    local = batch["inputs"].shape[0]
    micro = micro_batch_size or local
    if local % micro:
        raise UserError(f"micro-batch {micro} does not divide this process's batch of {local} rows")
    if state.carry is None:
        state.carry = state.module.initial_carry(batch)
    draws = step_draws(state, global_batch_size, rank * local, (rank + 1) * local)
    sparse_optimizers = [o for o in state.optimizers if isinstance(o, SparseSignSGD)]

    loss: Any = 0.0
    metrics: dict[str, Any] = {}
    for start in range(0, local, micro):
        stop = start + micro
        whole = start == 0 and stop == local
        part = {k: v[start:stop] for k, v in batch.items()} if not whole else batch
        carry = state.carry if whole else carry_rows(state.carry, start, stop)
        new_carry, part_loss, part_metrics = forward_backward(
            state.head,
            carry,
            part,
            global_batch_size=global_batch_size,
            generator=state.generator,
            draws={k: v[start:stop] for k, v in draws.items()},
        )
        if whole:
            state.carry = new_carry
        else:
            put_carry_rows(state.carry, start, new_carry)
        for optimizer in sparse_optimizers:
            optimizer.collect_micro_batch()
        loss = loss + part_loss
        metrics = {k: metrics.get(k, 0.0) + v for k, v in part_metrics.items()}

    # dense gradients are all-reduced here; the sparse optimizer gathers its rows and ids across ranks itself
    dense_grads = [p.grad for p in state.module.parameters() if p.requires_grad and p.grad is not None]
    if world_size > 1:
        import torch.distributed as dist

        for grad in dense_grads:
            dist.all_reduce(grad)
    grads = dense_grads + [g for o in sparse_optimizers for g, _ in o.pending]

    # One collective and one device sync for divergence, stop signal and metrics: every rank learns all three.
    device = loss.device
    dtype = reduce_dtype(device)
    nonfinite = (~torch.isfinite(loss)).any()
    for grad in grads:
        nonfinite = nonfinite | (~torch.isfinite(grad)).any()
    names = [k for k in METRIC_KEYS if k in metrics]
    packed = torch.stack(
        [
            nonfinite.to(dtype),
            torch.tensor(1.0 if stop_requested else 0.0, dtype=dtype, device=device),
            loss.to(dtype),
            *[metrics[k].detach().to(device=device, dtype=dtype) for k in names],
        ]
    )
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(packed)
    packed = packed.cpu().tolist()
    if packed[0] > 0:
        culprit = first_nonfinite(state.module, loss, sparse_optimizers)
        for optimizer in state.optimizers:
            optimizer.zero_grad()
        raise TrainingDiverged(
            f"training diverged at step {state.step}: {culprit}. Nothing after the last checkpoint was saved; "
            "lower train.lr, check the data, or delete the checkpoint folder to start over.",
            culprit,
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


def route_sums(batch: dict[str, Any], preds: Any, task: Any) -> tuple[float, float]:
    """(valid, optimal) route counts of this batch's labelled rows, by `hrm.evaluation.metrics.route_scores`
    (the evaluate stage's rule: a connected, allowed path whose cost equals the Dijkstra optimum)."""
    import numpy as np

    from hrm.evaluation import metrics as M
    from hrm.training.data import IGNORE_LABEL

    labels = batch["labels"].cpu().numpy()
    labelled = (labels != IGNORE_LABEL).any(-1)  # padding rows have none
    inputs = batch["inputs"].cpu().numpy()[labelled]
    identifiers = batch["puzzle_identifiers"].cpu().numpy()[labelled]
    optimum = M.optimal_costs(inputs, identifiers, task)
    scores = M.score_predictions(
        inputs, preds.cpu().numpy()[labelled], labels[labelled], identifiers, IGNORE_LABEL, task, optimum
    )
    return float(np.sum(scores.route_valid)), float(np.sum(scores.route_optimal))


def evaluate(
    state: TrainState,
    batches: Iterable[dict[str, Any]],
    *,
    device: Any,
    world_size: int = 1,
    route_task: Any = None,
) -> dict[str, float]:
    """Every test batch run until all rows halted; the last segment's metric sums, summed, divided by count.

    With `route_task` (the data's routing.json, `hrm.evaluation.data.load_route_task`) the last segment's
    predictions are also scored as routes: `route_valid_rate` and `route_optimal_rate`, the evaluate stage's
    metrics, so a run's eval curve is the task's own measure (hrm compare's budget curves).
    """
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
                keys = ["preds"] if route_task is not None else []
                for _ in range(MAX_EVAL_SEGMENTS):
                    carry, _, metrics, outputs, all_halted = state.head(
                        carry=carry, batch=batch, return_keys=keys
                    )
                    if bool(all_halted):
                        break
                else:
                    raise RuntimeError(f"evaluation did not halt within {MAX_EVAL_SEGMENTS} segments")
                if route_task is not None:
                    valid, optimal = route_sums(batch, outputs["preds"], route_task)
                    metrics = {
                        **metrics,
                        "route_valid_rate": torch.tensor(valid),
                        "route_optimal_rate": torch.tensor(optimal),
                    }
                if totals is None:
                    names = [
                        k for k in (*METRIC_KEYS, *ROUTE_KEYS) if k in metrics and k != "q_continue_loss"
                    ]
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
