"""The paper's direct-prediction baseline: H_layers + L_layers post-norm blocks over the same input embedding,
no recurrence, no Q-head (so no q losses); every row halts after one segment. `arch.name: transformer`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hrm.models.act import ACTCarry, ACTModel
from hrm.models.config import ModelConfig
from hrm.models.layers import CastedLinear, InputEmbedding, post_norm_blocks


@dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """The shared keys only: H_layers + L_layers blocks, no cycles, no Q-head (the halting keys are ignored)."""

    def block_counts(self) -> tuple[int, int, int]:
        """Every block once, all with a graph; no target-Q pass."""
        blocks = self.H_layers + self.L_layers
        return blocks, blocks, 0


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
    eval_segments = 1

    def forward(
        self,
        carry: ACTCarry,
        batch: Mapping[str, torch.Tensor],
        draws: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        """One full prediction; `draws` is accepted as every model's and unused (this model draws nothing)."""
        data = self.take_new_examples(carry, batch)  # every row halted last call: the new batch
        logits = self.inner(data["inputs"], data["puzzle_identifiers"])
        size = logits.shape[0]
        steps = torch.ones(size, dtype=torch.int32, device=logits.device)
        halted = torch.ones(size, dtype=torch.bool, device=logits.device)
        return ACTCarry(None, None, steps, halted, data), {"logits": logits}
