"""Training compute of one ACT segment of one row: a run's compute after `step` steps is `step x
global_batch_size x segment_flops(config).total` (`hrm compare`'s budget curves; the doctor's estimates).

2 FLOPs per multiply-add of every matmul; norms, RoPE, activations, embeddings and optimizers (each O(tokens x
hidden)) are left out. Backward = 2 x the forward of the part with a graph. `tests/test_flops.py` checks the
count against torch's FLOP counter.

Per token and block, with h = hidden_size, T = seq_len + puzzle_emb_len tokens, w = swiglu_width(h):
    attention block   8 h^2 (qkv, out) + 4 T h (scores, values) + 6 h w (SwiGLU)
    mlp_t block       6 h w_T (SwiGLU across the T positions, w_T = swiglu_width(T)) + 6 h w
Blocks per segment (forward; those with a graph):
    hrm_v1        H_cycles x (L_cycles x L_layers + H_layers); L_layers + H_layers (the one-step gradient)
    trm           H_cycles x (L_cycles + 1) x L_layers; (L_cycles + 1) x L_layers (the last recursion)
    transformer   H_layers + L_layers; all of them
plus, for HRM's Q-learning (no_ACT_continue false, halt_max_steps > 1), a second forward of every block without
the LM head for the target Q. Heads: LM 2 h V per token over all T positions, Q 4 h per row.
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


def block_counts(config: ModelConfig) -> tuple[int, int, int]:
    """(forward blocks, blocks with a graph, target-Q forward blocks) of one training segment."""
    hc, lc, hl, ll = config.H_cycles, config.L_cycles, config.H_layers, config.L_layers
    if config.name == "transformer":
        return hl + ll, hl + ll, 0
    if config.name == "trm":
        forward, graph = hc * (lc + 1) * ll, (lc + 1) * ll
    else:
        forward, graph = hc * (lc * ll + hl), ll + hl
    target_q = forward if (not config.no_ACT_continue and config.halt_max_steps > 1) else 0
    return forward, graph, target_q


def segment_flops(config: ModelConfig) -> SegmentFlops:
    """Training FLOPs of one row's segment for `config`'s architecture (see the module docstring)."""
    tokens, h = config.total_len, config.hidden_size
    mlp = 6 * h * swiglu_width(h, config.expansion)
    if config.mlp_t:
        per_block = (6 * h * swiglu_width(tokens, config.expansion) + mlp) * tokens
    else:
        per_block = (8 * h * h + 4 * tokens * h + mlp) * tokens
    forward_blocks, graph_blocks, target_q_blocks = block_counts(config)
    lm_head = 2 * h * config.vocab_size * tokens
    q_head = 0 if config.name == "transformer" else 4 * h
    forward = (forward_blocks + target_q_blocks) * per_block + lm_head + q_head * (1 + (target_q_blocks > 0))
    backward = 2 * (graph_blocks * per_block + lm_head + q_head)
    return SegmentFlops(forward=float(forward), backward=float(backward))
