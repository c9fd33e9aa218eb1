"""Training compute of one ACT segment of one row: a run's compute after `step` steps is `step x
global_batch_size x segment_flops(config).total` (`hrm compare`'s budget curves; the doctor's estimates).

2 FLOPs per multiply-add of every matmul; norms, RoPE, activations, embeddings and optimizers (each O(tokens x
hidden)) are left out. Backward = 2 x the forward of the part with a graph. `tests/test_flops.py` checks the
count against torch's FLOP counter.

Per token and block, with h = hidden_size, T = seq_len + puzzle_emb_len tokens, w = swiglu_width(h):
    attention block   8 h^2 (qkv, out) + 4 T h (scores, values) + 6 h w (SwiGLU)
    mlp_t block       6 h w_T (SwiGLU across the T positions, w_T = swiglu_width(T)) + 6 h w
Blocks per segment: each architecture's config counts them (`block_counts`: forward, with a graph, and HRM's
target-Q second forward, QHaltingConfig.target_q_blocks). Heads: LM 2 h V per token over all T positions, Q 4 h
per row where the architecture has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from hrm.models.config import ModelConfig
from hrm.models.layers import swiglu_width

FORMULA = (
    "per row and segment: (forward blocks + target-Q blocks + 2 x graph blocks) x T x block "
    "+ 3 x (2 h V T + 4 h); block = 8 h^2 + 4 T h + 6 h w (attention) or 6 h w_T + 6 h w (mlp_t)"
)


@dataclass(frozen=True)
class SegmentFlops:
    """FLOPs of one row's training segment: forward (target-Q pass included) and backward."""

    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


def segment_flops(config: ModelConfig) -> SegmentFlops:
    """Training FLOPs of one row's segment for `config`'s architecture (see the module docstring)."""
    tokens, h = config.total_len, config.hidden_size
    mlp = 6 * h * swiglu_width(h, config.expansion)
    if config.mlp_t:
        per_block = (6 * h * swiglu_width(tokens, config.expansion) + mlp) * tokens
    else:
        per_block = (8 * h * h + 4 * tokens * h + mlp) * tokens
    forward_blocks, graph_blocks, target_q_blocks = config.block_counts()
    lm_head = 2 * h * config.vocab_size * tokens
    q_head = 4 * h if config.has_q_head else 0
    forward = (forward_blocks + target_q_blocks) * per_block + lm_head + q_head * (1 + (target_q_blocks > 0))
    backward = 2 * (graph_blocks * per_block + lm_head + q_head)
    return SegmentFlops(forward=float(forward), backward=float(backward))
