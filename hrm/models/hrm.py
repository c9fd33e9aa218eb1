"""HRM ACT v1 (Wang et al. 2025, sapientinc/HRM), top to bottom in the paper's order.

Two recurrent modules: L (fast, detailed) updates H_cycles x L_cycles times, H (slow, abstract) once per
cycle; only the last L and the last H update carry gradient (the one-step approximation of the fixed-point
gradient). Input embedding, blocks, heads and initial states: `layers.py`; configuration: `config.py`; the
ACT loop (halting, exploration, target-Q): `act.py`. Parameter names and shapes equal the official
checkpoint layout (sapientinc/HRM; the key set is written out in tests/test_models.py), so `load_official_checkpoint` takes one as is.
"""

from __future__ import annotations

import torch
from torch import nn

from hrm.models.act import QHaltingACT
from hrm.models.config import ModelConfig
from hrm.models.layers import InputEmbedding, ReasoningModule, RecurrentHeads


class HRMInner(InputEmbedding, RecurrentHeads, nn.Module):
    """One ACT segment: H_cycles x L_cycles updates, only the last L and H with gradient."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings()
        self.H_level = ReasoningModule(config, config.H_layers)
        self.L_level = ReasoningModule(config, config.L_layers)
        self._build_heads_and_states()

    def forward(
        self,
        z_H: torch.Tensor,
        z_L: torch.Tensor,
        inputs: torch.Tensor,
        puzzle_identifiers: torch.Tensor,
        with_logits: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One segment. Returns the new (detached) z_H, z_L, the logits [B, L, V], q_halt and q_continue.

        `with_logits=False` (the target-Q pass, which reads only the Q-head) skips the LM head; logits None.
        """
        config = self.config
        cos_sin = self.cos_sin()
        x = self.input_embeddings(inputs, puzzle_identifiers)

        # All updates but the last L and the last H: no graph, so memory does not grow with the cycles.
        with torch.no_grad():
            for h_step in range(config.H_cycles):
                last_h = h_step == config.H_cycles - 1
                l_injection = z_H + x  # z_H is fixed during an H cycle's L updates
                for l_step in range(config.L_cycles):
                    if not (last_h and l_step == config.L_cycles - 1):
                        z_L = self.L_level(z_L, l_injection, cos_sin)
                if not last_h:
                    z_H = self.H_level(z_H, z_L, cos_sin)

        # The one-step gradient: a single L and H update with the graph.
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)

        logits, q_halt, q_continue = self.heads(z_H, with_logits)
        return z_H.detach(), z_L.detach(), logits, q_halt, q_continue


class HRMACT(QHaltingACT):
    """HRM with its ACT loop (Q-learning halting; `act.QHaltingACT`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, HRMInner(config))
