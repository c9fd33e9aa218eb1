"""TRM, the Tiny Recursive Model (Jolicoeur-Martineau 2025, SamsungSAILMontreal/TinyRecursiveModels).

HRM's outer machinery around one small network, `L_level`, that updates the latent z_L ("z") from the answer
state and the input, then the answer z_H ("y") from the latent. H_cycles - 1 such recursions run without
gradient, the last one is back-propagated whole. State_dict keys equal the official layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from hrm.models.config import QHaltingConfig
from hrm.models.layers import CosSin, ReasoningModule, RecurrentInner


@dataclass(frozen=True)
class TRMConfig(QHaltingConfig):
    """HRM's keys; TRM's recipe sets its own values in params.yaml (H_cycles 3, L_cycles 4, L_layers 2, ...)."""

    min_H_layers: ClassVar[int] = (
        0  # the single network is L_level; H_layers is unused (the official config: 0)
    )

    def block_counts(self) -> tuple[int, int, int]:
        """H_cycles x (L_cycles + 1) x L_layers blocks; the last recursion's (L_cycles + 1) x L_layers."""
        forward = self.H_cycles * (self.L_cycles + 1) * self.L_layers
        return forward, (self.L_cycles + 1) * self.L_layers, self.target_q_blocks(forward)


class TRMInner(RecurrentInner):
    """One ACT segment: H_cycles recursions of the single network, only the last with gradient."""

    def build_levels(self) -> None:
        self.L_level = ReasoningModule(self.config, self.config.L_layers)  # the one network (HRM's name)

    def recursion(
        self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cycle: L_cycles latent updates z = net(z, y + x), then the answer update y = net(y, z)."""
        injection = z_H + x  # the answer state is fixed during the latent updates
        for _ in range(self.config.L_cycles):
            z_L = self.L_level(z_L, injection, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        return z_H, z_L

    def segment(
        self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # memory independent of H_cycles
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self.recursion(z_H, z_L, x, cos_sin)
        return self.recursion(z_H, z_L, x, cos_sin)
