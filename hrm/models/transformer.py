"""The paper's direct-prediction baseline: a plain transformer of HRM's size, no recurrence, no ACT.

H_layers + L_layers post-norm blocks (8 at the paper shape) over the same input embedding (tokens + puzzle
prefix), one forward per example: every row halts after one segment. Same API as HRM and TRM, so the
trainer, evaluation and checkpoints work unchanged; `arch.name: transformer` selects it. It has no Q-head,
so its outputs carry no q-logits and the loss head reports no q losses or q_halt_accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hrm.models.act import ACTCarry, ACTModel
from hrm.models.config import ModelConfig
from hrm.models.layers import CastedLinear, InputEmbedding, post_norm_blocks


class TransformerInner(InputEmbedding, nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings()
        self.layers = post_norm_blocks(config, config.H_layers + config.L_layers)
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        cos_sin = self.cos_sin()
        hidden = self.input_embeddings(inputs, puzzle_identifiers)
        for layer in self.layers:
            hidden = layer(hidden, cos_sin)
        return self.lm_head(hidden)[:, self.config.puzzle_emb_len :]


class TransformerBaseline(ACTModel):
    """One call = one full prediction; every row halts at once (steps = 1)."""

    recurrent = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, TransformerInner(config))

    @property
    def eval_segments(self) -> int:
        """One prediction, no recurrence: every row halts after the first segment."""
        return 1

    def forward(
        self,
        carry: ACTCarry,
        batch: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        del generator  # no randomness: nothing to explore
        # Rows always halt after one segment, so every call takes the new batch (written generally anyway).
        data = self.take_new_examples(carry, batch)
        logits = self.inner(data["inputs"], data["puzzle_identifiers"])
        size = logits.shape[0]
        steps = torch.ones(size, dtype=torch.int32, device=logits.device)
        halted = torch.ones(size, dtype=torch.bool, device=logits.device)
        return ACTCarry(None, None, steps, halted, data), {"logits": logits}
