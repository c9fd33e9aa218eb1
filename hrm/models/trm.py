"""TRM, the Tiny Recursive Model (Jolicoeur-Martineau 2025, SamsungSAILMontreal/TinyRecursiveModels),
top to bottom in the paper's order.

HRM's outer machinery (ACT segments with a detached carry, puzzle-embedding prefix, Q-head) around one small
network, `L_level` (L_layers post-norm blocks), that updates both states: the latent z_L ("z") from the answer
state and the input, then the answer state z_H ("y") from the latent. A segment runs H_cycles such cycles; the
first H_cycles - 1 without gradient, the last one whole with gradient (full backpropagation through one
recursion instead of HRM's one-step gradient). With `no_ACT_continue` (TRM's setting) a row halts when
q_halt > 0 and no target-Q second forward runs (`act.QHaltingACT`). State_dict keys equal the official layout.
"""

from __future__ import annotations

import torch
from torch import nn

from hrm.models.act import QHaltingACT
from hrm.models.config import ModelConfig
from hrm.models.layers import CosSin, InputEmbedding, ReasoningModule, RecurrentHeads


class TRMInner(InputEmbedding, RecurrentHeads, nn.Module):
    """One ACT segment: H_cycles recursions of the single network, only the last with gradient."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings()
        self.L_level = ReasoningModule(config, config.L_layers)  # the one network (TRM keeps HRM's name)
        self._build_heads_and_states()

    def recursion(
        self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cycle: L_cycles latent updates z = net(z, y + x), then the answer update y = net(y, z)."""
        injection = z_H + x  # the answer state is fixed during the latent updates
        for _ in range(self.config.L_cycles):
            z_L = self.L_level(z_L, injection, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        return z_H, z_L

    def forward(
        self,
        z_H: torch.Tensor,
        z_L: torch.Tensor,
        inputs: torch.Tensor,
        puzzle_identifiers: torch.Tensor,
        with_logits: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One segment. Returns the new (detached) z_H, z_L, the logits [B, L, V], q_halt and q_continue."""
        cos_sin = self.cos_sin()
        x = self.input_embeddings(inputs, puzzle_identifiers)
        # H_cycles - 1 recursions improve the states without a graph (memory independent of H_cycles) ...
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self.recursion(z_H, z_L, x, cos_sin)
        # ... then one whole recursion is back-propagated.
        z_H, z_L = self.recursion(z_H, z_L, x, cos_sin)
        logits, q_halt, q_continue = self.heads(z_H, with_logits)
        return z_H.detach(), z_L.detach(), logits, q_halt, q_continue


class TRMACT(QHaltingACT):
    """TRM with its ACT loop (q_halt > 0 halting when `no_ACT_continue`; `act.QHaltingACT`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, TRMInner(config))
