"""HRM ACT v1 (Wang et al. 2025, sapientinc/HRM): two recurrent modules, L (fast) updated H_cycles x L_cycles
times and H (slow) once per cycle; only the last L and H updates carry gradient (the one-step approximation).
Parameter names and shapes equal the official checkpoint's (key set in tests/test_models.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hrm.models.config import QHaltingConfig
from hrm.models.layers import CosSin, ReasoningModule, RecurrentInner


@dataclass(frozen=True)
class HRMConfig(QHaltingConfig):
    """HRM's keys are the shared ones (ModelConfig, QHaltingConfig); the paper's values are the defaults."""

    def block_counts(self) -> tuple[int, int, int]:
        """H_cycles x (L_cycles x L_layers + H_layers) blocks; the one-step gradient's L_layers + H_layers."""
        forward = self.H_cycles * (self.L_cycles * self.L_layers + self.H_layers)
        return forward, self.L_layers + self.H_layers, self.target_q_blocks(forward)


class HRMInner(RecurrentInner):
    """One ACT segment: H_cycles x L_cycles updates, only the last L and H with gradient."""

    def build_levels(self) -> None:
        self.H_level = ReasoningModule(self.config, self.config.H_layers)
        self.L_level = ReasoningModule(self.config, self.config.L_layers)

    def segment(
        self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
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
        return z_H, z_L
