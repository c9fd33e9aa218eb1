"""The paper's direct-prediction baseline: a plain transformer of HRM's size, no recurrence, no ACT.

H_layers + L_layers post-norm blocks (8 at the paper shape) over the same input embedding (tokens + puzzle
prefix), one forward per example: every row halts after one segment. Same API as `HRMACT`, so the trainer,
evaluation and checkpoints work unchanged; `arch.name: transformer` selects it. It has no Q-head, so its
outputs carry no q-logits and the loss head reports no q losses or q_halt_accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hrm.models.hrm import ACTCarry, HRMConfig, InputEmbedding, _keep_or_take
from hrm.models.layers import CastedLinear, PostNormBlock
from hrm.models.sparse_embedding import PuzzleEmbedding


class TransformerInner(InputEmbedding, nn.Module):
    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings()
        self.layers = nn.ModuleList(
            PostNormBlock(config.hidden_size, config.num_heads, config.expansion, config.rms_norm_eps)
            for _ in range(config.H_layers + config.L_layers)
        )
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        cos_sin = self.cos_sin()
        hidden = self.input_embeddings(inputs, puzzle_identifiers)
        for layer in self.layers:
            hidden = layer(hidden, cos_sin)
        return self.lm_head(hidden)[:, self.config.puzzle_emb_len :]


class TransformerBaseline(nn.Module):
    """One call = one full prediction; every row halts at once (steps = 1)."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = TransformerInner(config)

    @property
    def puzzle_emb(self) -> PuzzleEmbedding | None:
        return getattr(self.inner, "puzzle_emb", None)

    @property
    def eval_segments(self) -> int:
        """One prediction, no recurrence: every row halts after the first segment."""
        return 1

    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> ACTCarry:
        size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            z_H=None,
            z_L=None,
            steps=torch.zeros(size, dtype=torch.int32, device=device),
            halted=torch.ones(size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(
        self,
        carry: ACTCarry,
        batch: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        del generator  # no randomness: nothing to explore
        # Rows always halt after one segment, so every call takes the new batch (written generally anyway).
        data = {k: _keep_or_take(carry.halted, batch[k], v) for k, v in carry.current_data.items()}
        logits = self.inner(data["inputs"], data["puzzle_identifiers"])
        size = logits.shape[0]
        steps = torch.ones(size, dtype=torch.int32, device=logits.device)
        halted = torch.ones(size, dtype=torch.bool, device=logits.device)
        return ACTCarry(None, None, steps, halted, data), {"logits": logits}
