"""The puzzle embedding: one learned vector per puzzle identifier (here: per vehicle), updated sparsely.

As in HRM the table is a buffer (`weights`, saved), out of the dense optimizer; each training batch copies its
rows into a leaf tensor (`local_weights`, not saved) that collects the gradient, and `hrm.optim.SparseSignSGD`
updates only the rows in `local_ids` (sign-SGD: what Adam reduces to for such sparse gradients).
"""

from __future__ import annotations

import torch
from torch import nn


class PuzzleEmbedding(nn.Module):
    """Table [num_identifiers, dim], zero-initialised, with a per-batch gradient-carrying copy in training."""

    def __init__(self, num_identifiers: int, dim: int, batch_size: int, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.batch_size = batch_size
        self.register_buffer("weights", torch.zeros(num_identifiers, dim), persistent=True)
        self.register_buffer(
            "local_weights", torch.zeros(batch_size, dim, requires_grad=True), persistent=False
        )
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Module.to() turns the grad-carrying buffer into a non-leaf copy; make it a leaf again so that
        # backward fills its .grad on the new device.
        result = super()._apply(fn, recurse)
        self.local_weights = self.local_weights.detach().requires_grad_(True)
        return result

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            # Eval, or a no-grad pass in training (HRM's target-Q forward): plain lookup, nothing recorded.
            return self.weights[ids].to(self.cast_to)
        if ids.shape[0] != self.batch_size:
            raise ValueError(
                f"puzzle embedding was built for batch_size {self.batch_size} per process, got a training "
                f"batch of {ids.shape[0]}; training batches must be full (drop the last partial one)"
            )
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)
