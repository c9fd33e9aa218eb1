"""TRM, the Tiny Recursive Model (Jolicoeur-Martineau 2025, SamsungSAILMontreal/TinyRecursiveModels).

HRM's outer machinery around one small network, `L_level`, that updates the latent z_L ("z") from the answer
state and the input, then the answer z_H ("y") from the latent. H_cycles - 1 such recursions run without
gradient, the last one is back-propagated whole. State_dict keys equal the official layout.
"""

from __future__ import annotations

import torch

from hrm.models.layers import CosSin, ReasoningModule, RecurrentInner


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
