"""HRM's `ACTLossHead` (state_dict prefix `model.`) and its losses, per segment: lm_loss = sum over rows of
the row's mean token cross-entropy; q_halt_loss = BCE(q_halt, row exactly right); q_continue_loss = BCE(
q_continue, bootstrapped target), training only; total = lm + 0.5 * (q_halt + q_continue). Losses sum every
row, accuracy-type metrics the rows that halted this segment; `normalize_metrics` divides both."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL_ID = -100

LOSS_METRICS = ("lm_loss", "q_halt_loss", "q_continue_loss")


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(s / sum s) as log s - log sum s (the quotient's gradient squares the sum: inf in fp32 at 1e20), with
    s(x) = x + 1 for x >= 0, 1 / (1 - x) below. The reciprocal only ever sees x <= 0, so neither `torch.where`
    branch nor its gradient is inf (at x = 1, 1 / (1 - x) would give NaN gradients; the official epsilon 1e-30
    helps only in float64); the values equal the official ones."""
    negative = logits < 0
    s = torch.where(negative, 1 / (1 - torch.where(negative, logits, 0)), logits + 1)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss [B, L] with stablemax in place of softmax (HRM); float64 (MPS has none: float32)."""
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    logprobs = log_stablemax(logits.to(dtype), dim=-1)
    valid = labels != IGNORE_LABEL_ID
    safe_labels = torch.where(valid, labels, 0).to(torch.long)
    picked = torch.gather(logprobs, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss [B, L], ordinary cross-entropy in fp32 (0 at ignored tokens)."""
    flat = F.cross_entropy(
        logits.to(torch.float32).reshape(-1, logits.shape[-1]),
        labels.to(torch.long).reshape(-1),
        ignore_index=IGNORE_LABEL_ID,
        reduction="none",
    )
    return flat.view(labels.shape)


LOSS_FUNCTIONS = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


class ACTLossHead(nn.Module):
    """Runs one ACT segment of `model` and scores it. Call signature is the project's model contract."""

    def __init__(self, model: nn.Module, loss_type: str) -> None:
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            from hrm.io import UserError

            raise UserError(
                f"params.yaml: arch.loss must be one of {', '.join(LOSS_FUNCTIONS)}; got {loss_type!r}"
            )
        self.model = model
        self.loss_type = loss_type
        self.loss_fn = LOSS_FUNCTIONS[loss_type]

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def puzzle_emb(self) -> nn.Module | None:
        """The sparse puzzle embedding (for `hrm.optim.SparseSignSGD`); None if puzzle_emb_ndim is 0."""
        return self.model.puzzle_emb

    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> Any:
        return self.model.initial_carry(batch)

    def draw_row_randomness(self, rows: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return self.model.draw_row_randomness(rows, generator)

    def forward(
        self,
        carry: Any,
        batch: Mapping[str, torch.Tensor],
        return_keys: Sequence[str] = (),
        draws: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[Any, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """(new carry, total loss (sum over rows), metric sums, requested outputs, all rows halted). `draws`: this
        batch's rows of `draw_row_randomness`, as the model takes them."""
        carry, outputs = self.model(carry=carry, batch=batch, draws=draws)
        labels = carry.current_data["labels"]
        logits = outputs["logits"]

        with torch.no_grad():
            outputs["preds"] = torch.argmax(logits, dim=-1)
            mask = labels != IGNORE_LABEL_ID
            label_counts = mask.sum(-1)
            divisor = label_counts.clamp_min(1).unsqueeze(-1)  # rows without labels: no NaN
            token_correct = mask & (outputs["preds"] == labels)
            seq_correct = token_correct.sum(-1) == label_counts
            # Metrics count the rows that finished in this segment (and have labels).
            counted = carry.halted & (label_counts > 0)
            metrics = {
                "count": counted.sum(),
                "accuracy": torch.where(
                    counted, (token_correct.to(torch.float32) / divisor).sum(-1), 0
                ).sum(),
                "exact_accuracy": (counted & seq_correct).sum(),
                "steps": torch.where(counted, carry.steps, 0).sum(),
            }
            if "q_halt_logits" in outputs:
                q_says_correct = outputs["q_halt_logits"] >= 0
                metrics["q_halt_accuracy"] = (counted & (q_says_correct == seq_correct)).sum()

        lm_loss = (self.loss_fn(logits, labels) / divisor).sum()
        total = lm_loss
        metrics["lm_loss"] = lm_loss.detach()
        if "q_halt_logits" in outputs:
            q_halt_logits = outputs["q_halt_logits"]
            q_halt_loss = F.binary_cross_entropy_with_logits(
                q_halt_logits, seq_correct.to(q_halt_logits.dtype), reduction="sum"
            )
            metrics["q_halt_loss"] = q_halt_loss.detach()
            q_continue_loss: torch.Tensor | float = 0.0
            if "target_q_continue" in outputs:
                q_continue_loss = F.binary_cross_entropy_with_logits(
                    outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum"
                )
                metrics["q_continue_loss"] = q_continue_loss.detach()
            total = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)

        metrics = {k: v.to(torch.float32) for k, v in metrics.items()}
        returned = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return carry, total, metrics, returned, carry.halted.all()


def normalize_metrics(sums: Mapping[str, float], global_batch_size: int | None = None) -> dict[str, float]:
    """Metric sums (maybe all-reduced) -> HRM's logged values: losses / `global_batch_size` in training (every
    row adds to the loss every segment), the rest / `count`; in eval (None) all / `count`. Count 0: left out."""
    count = float(sums.get("count", 0.0))
    result: dict[str, float] = {}
    for name, value in sums.items():
        if name == "count":
            continue
        if name in LOSS_METRICS and global_batch_size is not None:
            result[name] = float(value) / global_batch_size
        elif count > 0:
            result[name] = float(value) / count
    return result
