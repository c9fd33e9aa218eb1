"""The analytic FLOP count of a training segment (hrm.models.flops) against torch's own FLOP counter on a real
forward and backward of each architecture, the way the trainer runs it (train mode, exploration, target-Q)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hrm.models import ARCHITECTURES, build_model
from hrm.models.flops import segment_flops
from tests.conftest import arch, tiny_arch

pytestmark = pytest.mark.usefixtures("one_thread")

SEQ, VOCAB, IDS, ROWS = 16, 7, 3, 2
# The tiny profile's model of every registered architecture, and variants that change what the count sums.
CASES = {
    **{name: tiny_arch(name) for name in ARCHITECTURES},
    "hrm_v1 more cycles and layers": tiny_arch(H_cycles=2, L_cycles=3, L_layers=2, halt_max_steps=3),
    "hrm_v1 one segment": tiny_arch(H_cycles=2, L_cycles=2, halt_max_steps=1),
    "trm recipe": tiny_arch(
        "trm", H_cycles=3, L_cycles=2, L_layers=2, halt_max_steps=3, no_ACT_continue=True
    ),
    "trm with Q-learning": tiny_arch("trm", H_cycles=2, L_cycles=2, halt_max_steps=3),
    "trm mlp_t": tiny_arch("trm", mlp_t=True, puzzle_emb_len=2, no_ACT_continue=True),
    "transformer two levels": tiny_arch("transformer", H_layers=2),
}


def _cpu_sdpa_counters() -> dict:
    """torch's counter knows the CUDA SDPA kernels but not the CPU one: count it with torch's own formulas."""
    from torch.utils import flop_counter as fc

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def measured_flops(section: dict) -> tuple[float, float, object]:
    """torch's count of one training segment: (forward, forward + backward, config)."""
    head = build_model(
        section, seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=IDS, batch_size=ROWS, seed=0
    )
    head.train()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "inputs": torch.randint(1, VOCAB, (ROWS, SEQ), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, VOCAB, (ROWS, SEQ), generator=generator),
        "puzzle_identifiers": torch.tensor([1, 2], dtype=torch.int32),
    }
    carry = head.initial_carry(batch)
    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_counters()) as forward_counter:
        _, loss, _, _, _ = head(carry=carry, batch=batch, draws=head.draw_row_randomness(ROWS, generator))
    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_counters()) as backward_counter:
        loss.backward()
    forward = forward_counter.get_total_flops()
    return float(forward), float(forward + backward_counter.get_total_flops()), head.config


@pytest.mark.parametrize("case", list(CASES))
def test_segment_flops_equal_torchs_count(case):
    forward, total, config = measured_flops(CASES[case])
    counted = segment_flops(config)
    assert counted.forward * ROWS == pytest.approx(forward, rel=1e-6), case
    # torch counts SDPA's backward as 2.5x its forward (the kernel recomputes the scores), we count 2x
    assert counted.total * ROWS == pytest.approx(total, rel=0.01), case
    assert counted.total * ROWS <= total, case


def test_block_counts_follow_each_architecture():
    """The paper's HRM: 2 x (2 x 4 + 4) = 24 forward blocks, 8 with a graph, 24 again for the target Q."""
    from hrm.models.config import ModelConfig

    def config(**overrides):
        sizes = dict(seq_len=1600, vocab_size=24, num_puzzle_identifiers=5, batch_size=1)
        return ModelConfig.from_arch(arch(forward_dtype="float32", **overrides), **sizes)

    assert config().block_counts() == (24, 8, 24)
    trm = config(name="trm", H_cycles=3, L_cycles=4, L_layers=2, no_ACT_continue=True)
    assert trm.block_counts() == (30, 10, 0)
    assert config(name="transformer").block_counts() == (8, 8, 0)
    paper = segment_flops(config())
    # per token and block 8h^2 + 4Th + 6hw = 2.10M + 3.28M + 4.72M (w = 1536) = 10.1M; x 1601 tokens = 16.2
    # GFLOPs a block pass; 24 + 24 (target Q) forward + 2 x 8 backward = 64 passes: 1.04 TFLOPs per row-segment
    assert paper.total == pytest.approx(64 * 1601 * (8 * 512**2 + 4 * 1601 * 512 + 6 * 512 * 1536), rel=0.005)
