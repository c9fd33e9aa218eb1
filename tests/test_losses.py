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

    def forward(self, carry, batch, draws=None):
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


# ---- gradients where the numerics break: exact 0 and 1, bf16-rounded, huge ------------------------------

EDGE_ROWS = [
    [1.0, 0.5, -0.3],  # the case: official gradient [0.23, -0.43, 0.14]
    [0.0, -0.0, 1.0],
    [1.0, 1.0, 1.0],
    [-1.0, 0.0, 1.0],
    [1e4, -1e4, 1.0],
    [3e38, -3e38, 0.0],  # near the float32 limits
    [-1e30, -1e-30, 1e-30],
]


def _bf16_rows() -> list[list[float]]:
    """Logits near 0 and 1 as bf16 rounds them: most land exactly on 1.0, 0.0 or their neighbours."""
    near = torch.cat([torch.linspace(0.97, 1.03, 12), torch.linspace(-0.02, 0.02, 12)])
    return near.to(torch.bfloat16).to(torch.float64).view(-1, 3).tolist()


def _reference_grad(row: list[float], label: int) -> list[float]:
    """d/dx of -log(s(x_label) / sum s(x)) in float64, branch by branch with no torch.where."""

    def s(x: float) -> float:
        return x + 1 if x >= 0 else 1 / (1 - x)

    def ds(x: float) -> float:
        return 1.0 if x >= 0 else 1 / (1 - x) ** 2

    total = sum(s(x) for x in row)
    return [ds(x) / total - (ds(x) / s(x) if j == label else 0.0) for j, x in enumerate(row)]


def _official_stablemax_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The official HRM formula (models/losses.py: s with epsilon 1e-30, float64), written from its docs."""
    x = logits.to(torch.float64)
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    logprobs = torch.log(s / s.sum(-1, keepdim=True))
    return -torch.gather(logprobs, -1, labels.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("row", EDGE_ROWS + _bf16_rows())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_stablemax_gradient_is_finite_and_exact_at_edge_logits(row, dtype):
    if dtype is not torch.float64 and max(abs(x) for x in row) > torch.finfo(dtype).max:
        pytest.skip("not representable")
    logits = torch.tensor([[row]], dtype=dtype, requires_grad=True)
    for label in range(3):
        logits.grad = None
        stablemax_cross_entropy(logits, torch.tensor([[label]])).sum().backward()
        grad = logits.grad.to(torch.float64)[0, 0]
        assert torch.isfinite(grad).all(), (row, label, grad)
        exact_row = logits.detach().to(torch.float64)[0, 0].tolist()  # the value the dtype holds
        reference = torch.tensor(_reference_grad(exact_row, label), dtype=torch.float64)
        tolerance = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
        torch.testing.assert_close(grad, reference.to(dtype).to(torch.float64), rtol=tolerance, atol=1e-30)
        # The official formula agrees in value and (where its epsilon keeps it finite) in gradient.
        official_in = logits.detach().to(torch.float64).requires_grad_(True)
        official = _official_stablemax_ce(official_in, torch.tensor([[label]]))
        ours = stablemax_cross_entropy(logits.detach().to(torch.float64), torch.tensor([[label]]))
        torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-15)
        official.sum().backward()
        if torch.isfinite(official_in.grad).all():
            torch.testing.assert_close(
                grad, official_in.grad[0, 0].to(dtype).to(torch.float64), rtol=tolerance, atol=1e-30
            )


def test_stablemax_gradient_at_one_matches_the_official_figures():
    logits = torch.tensor([[[1.0, 0.5, -0.3]]], requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor([[1]])).sum().backward()
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([0.2342, -0.4324, 0.1386]), atol=1e-4, rtol=0)


def test_log_stablemax_in_float32_has_finite_gradients_at_one():
    """The MPS path computes in float32, where the official epsilon (1e-30) would not save the x = 1 branch."""
    from hrm.models.losses import log_stablemax

    logits = torch.tensor([[1.0, 0.0, -0.0, 1e30, -1e30]], requires_grad=True)
    log_stablemax(logits)[0, 0].backward()
    assert torch.isfinite(logits.grad).all(), logits.grad


@pytest.mark.parametrize("loss_type", ["stablemax_cross_entropy", "softmax_cross_entropy"])
def test_loss_head_gradients_finite_on_bf16_logits_of_exactly_one(loss_type):
    """The whole head as the trainer uses it: bf16 logits that are exactly 1.0 and 0.0, huge Q logits."""
    logits = torch.ones(2, 4, 5, dtype=torch.bfloat16)
    logits[:, :, 0] = 0.0
    logits[1, 1] = torch.tensor([1e4, -1e4, 1.0, 0.0, 1.0])
    logits.requires_grad_(True)
    q_halt = torch.tensor([1e4, -1e4], dtype=torch.bfloat16, requires_grad=True)
    q_continue = torch.tensor([0.0, 1.0], dtype=torch.bfloat16, requires_grad=True)
    outputs = {
        "logits": logits,
        "q_halt_logits": q_halt,
        "q_continue_logits": q_continue,
        "target_q_continue": torch.tensor([1.0, 0.0], dtype=torch.bfloat16),
    }
    labels = torch.tensor([[1, 2, 3, 4], [0, -100, 2, 1]])
    carry = ACTCarry(
        None, None, torch.ones(2, dtype=torch.int32), torch.tensor([True, False]), {"labels": labels}
    )
    head = ACTLossHead(_FixedModel(outputs, carry), loss_type)
    _, total, _, _, _ = head(carry=carry, batch={})
    total.backward()
    assert torch.isfinite(total)
    for name, tensor in (("logits", logits), ("q_halt", q_halt), ("q_continue", q_continue)):
        assert torch.isfinite(tensor.grad.float()).all(), (name, tensor.grad)
