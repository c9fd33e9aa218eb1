"""HRM's optimizers and learning-rate schedule. `AdamATan2` is our own copy of the reference update (the
official `adam-atan2` needs a CUDA build; `adam_atan2_pytorch.AdamAtan2` v0.4.1 computes `a * atan2(m/bc1,
sqrt(v/bc2))`, a different update: tests/test_optim.py shows it)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import Optimizer


class AdamATan2(Optimizer):
    """HRM's reference Adam-atan2 (no epsilon, decoupled decay): `p *= 1 - lr*wd`; `m = lerp(m, g, 1-b1)`;
    `v = lerp(v, min(g^2, float max), 1-b2)`; `p -= lr/(1-b1^t) * atan2(m, sqrt(v)/sqrt(1-b2^t))`."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad, state = param.grad, self.state[param]
                if not state:
                    # step as a CPU tensor: saved/loaded with the state, exact integer for t < 2^24.
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                param.mul_(1.0 - lr * weight_decay)
                exp_avg.lerp_(grad, 1.0 - beta1)
                # A finite |g| > sqrt(max) squares to inf, and the next lerp of v = inf is inf - inf = NaN:
                # cap the square at the largest float (a no-op wherever it is finite).
                exp_avg_sq.lerp_(grad.square().clamp_(max=torch.finfo(grad.dtype).max), 1.0 - beta2)
                denom = exp_avg_sq.sqrt().div_(math.sqrt(1.0 - beta2**step))
                param.add_(torch.atan2(exp_avg, denom), alpha=-lr / (1.0 - beta1**step))


class SparseSignSGD(Optimizer):
    """Sign-SGD for `PuzzleEmbedding` on the batch's ids only (every rank's): `w[id] = w[id] * (1 - lr*wd) -
    lr * sign(sum of id's gradients)`; built from the module, not its tensors, so moving the model is safe."""

    def __init__(self, embedding: torch.nn.Module, lr: float = 1e-2, weight_decay: float = 0.1) -> None:
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"invalid lr {lr} or weight_decay {weight_decay}")
        self.embedding = embedding
        # (gradient rows, ids) of earlier micro-batches of this step; see `collect_micro_batch`.
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        super().__init__([embedding.weights], dict(lr=lr, weight_decay=weight_decay))

    def collect_micro_batch(self) -> None:
        """Set this micro-batch's gradient rows and ids aside (the next one overwrites the local copy)."""
        local = self.embedding.local_weights
        if local.grad is not None:
            # the grad is dropped below (the next backward makes a new one); the ids buffer is overwritten in place
            self.pending.append((local.grad.detach(), self.embedding.local_ids.detach().clone()))
            local.grad = None

    def gradients(self) -> list[torch.Tensor]:
        """This step's gradient rows so far: the collected micro-batches', then the local copy's."""
        local = self.embedding.local_weights.grad
        return [grad for grad, _ in self.pending] + ([] if local is None else [local])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.pending = []
        local = self.embedding.local_weights
        if local.grad is not None:
            if set_to_none:
                local.grad = None
            else:
                local.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        """Sum this step's gradient rows per id: collected micro-batches, the local copy, every rank's."""
        parts = list(self.pending)
        local = self.embedding.local_weights
        if local.grad is not None:
            parts.append((local.grad, self.embedding.local_ids))
        if not parts:
            return
        grad, ids = _gather_across_ranks(torch.cat([g for g, _ in parts]), torch.cat([i for _, i in parts]))
        weights = self.embedding.weights
        unique_ids, inverse = ids.to(torch.long).unique(return_inverse=True)
        summed = torch.zeros(unique_ids.shape[0], grad.shape[1], dtype=grad.dtype, device=grad.device)
        summed.index_add_(0, inverse, grad)
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            rows = weights[unique_ids]
            rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(summed), alpha=-lr)
            weights[unique_ids] = rows


def _gather_across_ranks(grad: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' (grad, ids), concatenated in rank order; the inputs unchanged when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return grad, ids
    world = dist.get_world_size()
    grads = [torch.empty_like(grad) for _ in range(world)]
    all_ids = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(grads, grad.contiguous())
    dist.all_gather(all_ids, ids.contiguous())
    return torch.cat(grads), torch.cat(all_ids)


@dataclass(frozen=True)
class LrSchedule:
    """HRM's schedule for one run: `base_lr * step / warmup_steps` during warmup, then cosine from base_lr to
    base_lr * min_ratio at total_steps (constant with min_ratio 1.0)."""

    warmup_steps: int
    total_steps: int
    min_ratio: float

    def lr(self, step: int, base_lr: float) -> float:
        """The lr of optimizer step `step` (counted from 1, so the first update uses base_lr / warmup_steps)."""
        if step < self.warmup_steps:
            return base_lr * step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return base_lr * (self.min_ratio + (1.0 - self.min_ratio) * cosine)


# Past its end from step 1 with a floor of 0: lr 0 at every step (the memory and timing probes' throwaway steps).
ZERO_LR = LrSchedule(warmup_steps=0, total_steps=0, min_ratio=0.0)
