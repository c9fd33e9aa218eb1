"""A tiny stand-in for the model package's ACT loss head (same call contract), until hrm.models lands.

Only for trainer tests: it halts like HRM (step limit, Q-halt, seeded exploration) and returns HRM's metric
sums, so the trainer's carry, metrics, checkpoint and determinism paths are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Carry:
    z: torch.Tensor
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]

    def to_state(self) -> dict:
        return {
            "z": self.z,
            "steps": self.steps,
            "halted": self.halted,
            "current_data": dict(self.current_data),
        }

    @classmethod
    def from_state(cls, state: dict) -> Carry:
        return cls(state["z"], state["steps"], state["halted"], dict(state["current_data"]))


class Inner(nn.Module):
    def __init__(self, vocab: int, ids: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.puzzle_emb = nn.Embedding(ids, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.lm_head = nn.Linear(hidden, vocab)
        self.q_head = nn.Linear(hidden, 2)


class StandInHead(nn.Module):
    def __init__(self, arch: dict, metadata) -> None:
        super().__init__()
        self.hidden = int(arch["hidden_size"])
        self.cycles = int(arch["H_cycles"]) * int(arch["L_cycles"])
        self.halt_max_steps = int(arch["halt_max_steps"])
        self.exploration = float(arch["halt_exploration_prob"])
        self.model = Inner(metadata.vocab_size, metadata.num_puzzle_identifiers, self.hidden)

    def initial_carry(self, batch: dict) -> Carry:
        rows, length = batch["inputs"].shape
        device = batch["inputs"].device
        return Carry(
            z=torch.zeros(rows, length, self.hidden, device=device),
            steps=torch.zeros(rows, dtype=torch.int32, device=device),
            halted=torch.ones(rows, dtype=torch.bool, device=device),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def carry_from_state(self, state: dict) -> Carry:
        return Carry.from_state(state)

    def forward(self, carry: Carry, batch: dict, return_keys=(), generator=None):
        halted = carry.halted
        data = {
            k: torch.where(halted.view(-1, *([1] * (v.ndim - 1))), batch[k], carry.current_data[k])
            for k, v in carry.current_data.items()
        }
        z = torch.where(halted.view(-1, 1, 1), torch.zeros_like(carry.z), carry.z)
        m = self.model
        x = m.embed(data["inputs"].long()) + m.puzzle_emb(data["puzzle_identifiers"].long())[:, None]
        with torch.no_grad():
            for _ in range(self.cycles - 1):
                z = torch.tanh(m.mix(z + x))
        z = torch.tanh(m.mix(z + x))
        logits = m.lm_head(z)
        q_halt, q_continue = m.q_head(z[:, 0]).float().unbind(-1)
        steps = torch.where(halted, torch.zeros_like(carry.steps), carry.steps) + 1
        new_halted = steps >= self.halt_max_steps
        target_q = None
        if self.training and self.halt_max_steps > 1:
            new_halted = new_halted | (q_halt > q_continue)
            explore = torch.rand(q_halt.shape, generator=generator, device=q_halt.device) < self.exploration
            minimum = torch.randint(
                2, self.halt_max_steps + 1, q_halt.shape, generator=generator, device=q_halt.device
            )
            new_halted = new_halted & (steps >= explore * minimum)
            target_q = torch.sigmoid(torch.maximum(q_halt, q_continue)).detach()

        labels = data["labels"]
        mask = labels != -100
        counts = mask.sum(-1)
        preds = logits.argmax(-1)
        correct = mask & (preds == labels)
        seq_correct = correct.sum(-1) == counts
        valid = new_halted & (counts > 0)
        token_loss = (
            F.cross_entropy(logits.float().transpose(1, 2), labels.clamp_min(0), reduction="none") * mask
        )
        lm_loss = (token_loss.sum(-1) / counts.clamp_min(1)).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.float(), reduction="sum")
        metrics = {
            "count": valid.sum(),
            "accuracy": torch.where(valid, correct.sum(-1) / counts.clamp_min(1), 0).sum(),
            "exact_accuracy": (valid & seq_correct).sum(),
            "q_halt_accuracy": (valid & ((q_halt >= 0) == seq_correct)).sum(),
            "steps": torch.where(valid, steps, 0).sum(),
            "lm_loss": lm_loss.detach(),
            "q_halt_loss": q_halt_loss.detach(),
        }
        loss = lm_loss + 0.5 * q_halt_loss
        if target_q is not None:
            q_continue_loss = F.binary_cross_entropy_with_logits(q_continue, target_q, reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()
            loss = loss + 0.5 * q_continue_loss
        new_carry = Carry(z.detach(), steps, new_halted, data)
        outputs = {
            "logits": logits.detach(),
            "preds": preds,
            "q_halt_logits": q_halt,
            "q_continue_logits": q_continue,
        }
        return new_carry, loss, metrics, outputs, new_halted.all()


def install(monkeypatch) -> None:
    """Swap the trainer's model/optimizer seams for the stand-in and AdamW with HRM-style warmup."""
    from hrm.training import loop

    monkeypatch.setattr(loop, "build_model", lambda arch, metadata: StandInHead(arch, metadata))

    def build_optimizers(module, config, world_size):
        return [torch.optim.AdamW(module.parameters(), lr=0.0, weight_decay=config.weight_decay)], [config.lr]

    def make_lr_for(config, total_steps):
        return lambda step, base: base * min(1.0, step / max(1, config.lr_warmup_steps))

    monkeypatch.setattr(loop, "build_optimizers", build_optimizers)
    monkeypatch.setattr(loop, "make_lr_for", make_lr_for)
