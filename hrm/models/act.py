"""Adaptive computation time (ACT), shared by every architecture: the carry, its serialisation, and halting.

One call of a model = one ACT segment for every row. Halted rows take the next batch's example and a fresh
state; running rows keep theirs (the carry is detached: HRM's "deep supervision"). `QHaltingACT` is HRM's and
TRM's outer loop: Q-head halting, exploration and (unless `no_ACT_continue`) the target-Q second forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hrm.io import UserError
from hrm.models.config import ModelConfig
from hrm.models.sparse_embedding import PuzzleEmbedding


@dataclass
class ACTCarry:
    """Per-row state across ACT segments. `z_H`/`z_L` are None for models without recurrence."""

    z_H: torch.Tensor | None
    z_L: torch.Tensor | None
    steps: torch.Tensor  # int32 [B]: segments run on the row's current example
    halted: torch.Tensor  # bool [B]: the row takes a new example at the next call
    current_data: dict[str, torch.Tensor]  # the example each row is working on

    def to_state(self) -> dict[str, torch.Tensor]:
        """Flat dict of tensors (for `torch.save(..., weights_only=True)` checkpoints)."""
        state = {"steps": self.steps, "halted": self.halted}
        if self.z_H is not None and self.z_L is not None:
            state["z_H"], state["z_L"] = self.z_H, self.z_L
        state.update({f"current_data.{k}": v for k, v in self.current_data.items()})
        return {k: v.detach().clone() for k, v in state.items()}

    def rows(self, start: int, stop: int) -> ACTCarry:
        """Rows [start, stop) as views: a micro-batch's own part of a process's carry."""
        part = slice(start, stop)
        z_H, z_L = (None if z is None else z[part] for z in (self.z_H, self.z_L))
        data = {k: v[part] for k, v in self.current_data.items()}
        return ACTCarry(z_H, z_L, self.steps[part], self.halted[part], data)

    def put_rows(self, start: int, part: ACTCarry) -> None:
        """Write a micro-batch's new carry `part` into rows [start, start + its rows) of this one."""
        pairs = [
            (self.z_H, part.z_H),
            (self.z_L, part.z_L),
            (self.steps, part.steps),
            (self.halted, part.halted),
        ]
        for target, value in pairs + [(v, part.current_data[k]) for k, v in self.current_data.items()]:
            if target is not None:
                target[start : start + value.shape[0]].copy_(value)

    @classmethod
    def from_state(
        cls, state: Mapping[str, torch.Tensor], device: torch.device | str | None = None
    ) -> ACTCarry:
        prefix = "current_data."
        required = {"steps", "halted", f"{prefix}inputs", f"{prefix}labels", f"{prefix}puzzle_identifiers"}
        if ("z_H" in state) != ("z_L" in state) or not required <= set(state):
            raise UserError(
                f"checkpoint: ACT carry needs {sorted(required)} and both or neither of z_H, z_L; "
                f"it has {sorted(state)}"
            )
        moved = {k: v.to(device) if device is not None else v for k, v in state.items()}
        data = {k[len(prefix) :]: v for k, v in moved.items() if k.startswith(prefix)}
        return cls(moved.get("z_H"), moved.get("z_L"), moved["steps"], moved["halted"], data)


class ACTModel(nn.Module):
    """The carry boilerplate every architecture shares; `inner` computes one segment."""

    recurrent = True  # False (the transformer baseline): the carry holds no z_H/z_L

    def __init__(self, config: ModelConfig, inner: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.inner = inner

    @property
    def puzzle_emb(self) -> PuzzleEmbedding | None:
        return getattr(self.inner, "puzzle_emb", None)

    @property
    def eval_segments(self) -> int:
        """Segments an eval pass runs: always halt_max_steps (the Q-head never stops eval early)."""
        return self.config.halt_max_steps

    def draw_row_randomness(self, rows: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The per-row draws of one training segment, on the CPU ({}: this model draws nothing). The trainer
        draws them for the whole global batch and passes each forward its rows as `draws`, so a row's numbers
        do not depend on how the batch is split."""
        return {}

    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> ACTCarry:
        """Every row starts halted, so the first call resets it and takes the batch's example."""
        size, device = batch["inputs"].shape[0], batch["inputs"].device
        z_H = z_L = None
        if self.recurrent:
            shape = (size, self.config.total_len, self.config.hidden_size)
            z_H = torch.zeros(shape, dtype=self.config.forward_dtype, device=device)
            z_L = torch.zeros(shape, dtype=self.config.forward_dtype, device=device)
        steps = torch.zeros(size, dtype=torch.int32, device=device)
        halted = torch.ones(size, dtype=torch.bool, device=device)
        return ACTCarry(z_H, z_L, steps, halted, {k: torch.zeros_like(v) for k, v in batch.items()})

    @staticmethod
    def take_new_examples(carry: ACTCarry, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each row's example for this segment: the batch's where the row halted, its own elsewhere."""
        flag = carry.halted
        return {
            k: torch.where(flag.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }


class QHaltingACT(ACTModel):
    """HRM's and TRM's ACT loop around a `layers.RecurrentInner` with fixed initial states and a Q-head."""

    def draw_row_randomness(self, rows: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Halt exploration's draws: a uniform per row, and the minimum segments of an exploring row."""
        if self.config.halt_max_steps <= 1:
            return {}
        device = generator.device if generator is not None else torch.device("cpu")  # may drive a CUDA model
        high = self.config.halt_max_steps + 1
        return {
            "explore": torch.rand(rows, generator=generator, device=device).cpu(),
            "explore_min_steps": torch.randint(
                2, high, (rows,), generator=generator, device=device, dtype=torch.int32
            ).cpu(),
        }

    def forward(
        self,
        carry: ACTCarry,
        batch: Mapping[str, torch.Tensor],
        draws: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        """One segment. Training draws come from `draws` (this batch's rows of `draw_row_randomness`); without
        them, from the global RNG."""
        config = self.config
        assert carry.z_H is not None and carry.z_L is not None
        # Halted rows: fresh state, new example, step count 0. Running rows: unchanged.
        z_H, z_L = self.inner.reset_states(carry.halted, carry.z_H, carry.z_L)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = self.take_new_examples(carry, batch)

        z_H, z_L, logits, q_halt, q_continue = self.inner(
            z_H, z_L, data["inputs"], data["puzzle_identifiers"]
        )
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= config.halt_max_steps
            halted = is_last_step
            # Eval always runs halt_max_steps segments, so every row of a batch halts together.
            if self.training and config.halt_max_steps > 1:
                halted = halted | self.q_says_halt(q_halt, q_continue)
                # Exploration: some rows must run a random minimum number of segments first.
                if not draws:
                    draws = self.draw_row_randomness(q_halt.shape[0], None)
                explore = draws["explore"].to(q_halt.device) < config.halt_exploration_prob
                min_steps = explore * draws["explore_min_steps"].to(steps.device)
                halted = halted & (steps >= min_steps)
                if not config.no_ACT_continue:
                    # Target for q_continue: value of the next state, bootstrapped from a second forward (no
                    # replay buffer or target network; the batch is many parallel environments, as in PQN).
                    _, _, _, next_q_halt, next_q_continue = self.inner(
                        z_H, z_L, data["inputs"], data["puzzle_identifiers"], with_logits=False
                    )
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                    )
        return ACTCarry(z_H, z_L, steps.to(torch.int32), halted, data), outputs

    def q_says_halt(self, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
        """The Q-head's halting rule: q_halt > 0 with `no_ACT_continue` (TRM), else q_halt > q_continue."""
        return q_halt > 0 if self.config.no_ACT_continue else q_halt > q_continue
