"""Losses and the ACT loss head against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrm.models.act import ACTCarry
from hrm.models.losses import (
    ACTLossHead,
    normalize_metrics,
    softmax_cross_entropy,
    stablemax_cross_entropy,
)


def test_stablemax_cross_entropy_by_hand():
    logits = torch.tensor([[[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]]])
    labels = torch.tensor([[0, -100]])
    loss = stablemax_cross_entropy(logits, labels)
    # s = [3, 1/2, 1] -> p(label 0) = 3 / 4.5; the ignored token costs 0.
    assert loss.dtype == torch.float64
    assert loss[0, 0].item() == pytest.approx(-math.log(3 / 4.5), rel=1e-12)
    assert loss[0, 1].item() == 0.0


def test_stablemax_is_finite_where_softmax_would_overflow():
    logits = torch.tensor([[[1e6, 0.0]]])
    loss = stablemax_cross_entropy(logits, torch.tensor([[1]]))
    assert loss.item() == pytest.approx(math.log(1e6 + 2), rel=1e-9)


def test_softmax_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 1] = -100
    loss = softmax_cross_entropy(logits, labels)
    expected = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    torch.testing.assert_close(loss, expected)
    assert loss[0, 1].item() == 0.0


class _FixedModel(nn.Module):
    """Returns preset outputs and a preset carry: isolates the loss head's arithmetic."""

    def __init__(self, outputs: dict[str, torch.Tensor], carry: ACTCarry) -> None:
        super().__init__()
        self.outputs, self.carry = outputs, carry
        self.config = None

    def forward(self, carry, batch, generator=None):
        return self.carry, dict(self.outputs)


def test_act_loss_head_by_hand():
    # Two rows, three tokens, vocab 2. Row 0: all right, halted at step 3. Row 1: one token wrong, one
    # ignored, still running at step 2.
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]], [[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]]])
    labels = torch.tensor([[0, 1, 0], [0, 1, -100]])
    outputs = {
        "logits": logits,
        "q_halt_logits": torch.tensor([0.5, -1.0]),
        "q_continue_logits": torch.tensor([0.2, 0.3]),
        "target_q_continue": torch.tensor([0.25, 0.75]),
    }
    carry = ACTCarry(
        z_H=None,
        z_L=None,
        steps=torch.tensor([3, 2], dtype=torch.int32),
        halted=torch.tensor([True, False]),
        current_data={"labels": labels},
    )
    head = ACTLossHead(_FixedModel(outputs, carry), "stablemax_cross_entropy")
    _, total, metrics, returned, all_halted = head(carry=carry, batch={}, return_keys=["preds", "logits"])

    def token_loss(row: list[float], label: int) -> float:
        s = [x + 1 if x >= 0 else 1 / (1 - x) for x in row]
        return -math.log(s[label] / sum(s))

    row0 = (token_loss([1, 0], 0) + token_loss([0, 1], 1) + token_loss([2, -1], 0)) / 3
    row1 = (token_loss([1, 0], 0) + token_loss([1, 0], 1)) / 2  # mean over its 2 labelled tokens
    lm = row0 + row1

    def bce(logit: float, target: float) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    q_halt = bce(0.5, 1.0) + bce(-1.0, 0.0)  # targets: row 0 exactly right, row 1 not
    q_continue = bce(0.2, 0.25) + bce(0.3, 0.75)
    assert total.item() == pytest.approx(lm + 0.5 * (q_halt + q_continue), rel=1e-6)
    assert metrics["lm_loss"].item() == pytest.approx(lm, rel=1e-6)
    assert metrics["q_halt_loss"].item() == pytest.approx(q_halt, rel=1e-6)
    assert metrics["q_continue_loss"].item() == pytest.approx(q_continue, rel=1e-6)
    # Accuracy-type metrics: only the halted row 0 counts.
    assert metrics["count"].item() == 1
    assert metrics["accuracy"].item() == pytest.approx(1.0)
    assert metrics["exact_accuracy"].item() == 1
    assert metrics["q_halt_accuracy"].item() == 1  # q_halt 0.5 >= 0 says "right", and it is
    assert metrics["steps"].item() == 3
    assert returned["preds"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert set(returned) == {"preds", "logits"}
    assert not bool(all_halted)


def test_act_loss_head_without_target_has_no_q_continue_loss():
    outputs = {
        "logits": torch.zeros(1, 2, 3),
        "q_halt_logits": torch.zeros(1),
        "q_continue_logits": torch.zeros(1),
    }
    carry = ACTCarry(
        None,
        None,
        torch.ones(1, dtype=torch.int32),
        torch.ones(1, dtype=torch.bool),
        {"labels": torch.zeros(1, 2, dtype=torch.long)},
    )
    head = ACTLossHead(_FixedModel(outputs, carry), "softmax_cross_entropy")
    _, total, metrics, _, all_halted = head(carry=carry, batch={})
    assert "q_continue_loss" not in metrics
    assert total.item() == pytest.approx(math.log(3) + 0.5 * math.log(2), rel=1e-6)
    assert bool(all_halted)


def test_normalize_metrics_train_and_eval():
    sums = {"count": 2.0, "accuracy": 1.5, "exact_accuracy": 1.0, "lm_loss": 8.0, "q_halt_loss": 4.0}
    train = normalize_metrics(sums, global_batch_size=8)
    assert train == {"accuracy": 0.75, "exact_accuracy": 0.5, "lm_loss": 1.0, "q_halt_loss": 0.5}
    assert normalize_metrics(sums)["lm_loss"] == 4.0
    assert normalize_metrics({"count": 0.0, "accuracy": 0.0, "lm_loss": 2.0}, 4) == {"lm_loss": 0.5}
