"""The model configuration every architecture shares, from params.yaml's `arch` (switched by `arch.name`, every
key checked once, errors naming it) plus the dataset's sizes. Each architecture subclasses it in its own model file
with its keys, rules and FLOP block counts, and registers it in hrm.models.ARCHITECTURES."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hrm.io import UserError


@dataclass(frozen=True)
class ModelConfig:
    """What shapes every architecture: the dataset's sizes, the blocks, the puzzle-embedding prefix. Defaults are
    HRM's; each architecture's own values live in params.yaml."""

    batch_size: int  # per process; the sparse puzzle embedding's gradient buffer has this many rows
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    H_layers: int = 4
    L_layers: int = 4
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    pos_encodings: str = "rope"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    puzzle_emb_ndim: int = 512
    # Prefix positions for the puzzle embedding; 0 = ceil(puzzle_emb_ndim / hidden_size) (HRM). Resolved in
    # __post_init__, so after construction it is always the number of prefix positions.
    puzzle_emb_len: int = 0
    mlp_t: bool = False  # True (TRM's Sudoku model): an MLP across the sequence replaces attention
    forward_dtype: torch.dtype = torch.float32

    min_H_layers: ClassVar[int] = 1
    has_q_head: ClassVar[bool] = False  # a Q-head of 2 outputs per row (hrm.models.flops counts it)

    def block_counts(self) -> tuple[int, int, int]:
        """(forward blocks, blocks with a graph, target-Q forward blocks) of one training segment
        (hrm.models.flops)."""
        raise NotImplementedError(f"{type(self).__name__} does not count its blocks")

    @classmethod
    def from_arch(
        cls,
        arch: Mapping[str, Any],
        *,
        seq_len: int,
        vocab_size: int,
        num_puzzle_identifiers: int,
        batch_size: int,
        device: torch.device | str | None = None,
    ) -> ModelConfig:
        """The config of the architecture `arch.name` names (its registered subclass), from the `arch` section.
        Keys of no architecture, and ill-typed keys, fail with the key's name; another architecture's keys are
        checked and left out (one `arch` section serves every name). forward_dtype `auto` is bf16 on CUDA, fp32
        elsewhere (`hrm.runtime.dtype_name`)."""
        from hrm.models import ARCHITECTURES
        from hrm.runtime import dtype_name

        name = arch.get("name", "hrm_v1")
        if name not in ARCHITECTURES:
            raise UserError(f"params.yaml: arch.name must be one of {', '.join(ARCHITECTURES)}; got {name!r}")
        config_class = ARCHITECTURES[name].config
        own = {f.name for f in dataclasses.fields(config_class)}
        known = {f.name: f for a in ARCHITECTURES.values() for f in dataclasses.fields(a.config)}
        sized = {"batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers", "forward_dtype"}
        values: dict[str, Any] = {}
        for key, value in arch.items():
            if key in ("name", "loss", "forward_dtype"):
                continue
            if key not in known or key in sized:
                raise UserError(f"params.yaml: arch.{key} is not a setting of the HRM/TRM/transformer models")
            expected = type(known[key].default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                raise UserError(
                    f"params.yaml: arch.{key} must be {expected.__name__}, got {value!r} ({type(value).__name__})"
                )
            if key in own:
                values[key] = value
        device_type = torch.device(device).type if device is not None else "cpu"
        return config_class(
            batch_size=batch_size,
            seq_len=seq_len,
            vocab_size=vocab_size,
            num_puzzle_identifiers=num_puzzle_identifiers,
            forward_dtype=getattr(torch, dtype_name(str(arch.get("forward_dtype", "auto")), device_type)),
            **values,
        )

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise UserError(f"params.yaml: arch.{key} {rule} (got {getattr(self, key)!r})")

        need(self.H_layers >= self.min_H_layers, "H_layers", "must be at least 1")
        for key in ("H_cycles", "L_cycles", "L_layers", "hidden_size", "num_heads"):
            if hasattr(self, key):  # the cycles: the recurrent architectures' (QHaltingConfig)
                need(getattr(self, key) >= 1, key, "must be at least 1")
        need(self.hidden_size % self.num_heads == 0, "num_heads", "must divide hidden_size")
        need((self.hidden_size // self.num_heads) % 2 == 0, "num_heads", "must leave an even head dim")
        need(self.expansion > 0, "expansion", "must be positive")
        need(self.pos_encodings in ("rope", "learned"), "pos_encodings", "must be rope or learned")
        need(self.puzzle_emb_ndim >= 0, "puzzle_emb_ndim", "must be >= 0")
        need(
            self.puzzle_emb_len >= 0,
            "puzzle_emb_len",
            "must be >= 0 (0 = ceil(puzzle_emb_ndim / hidden_size))",
        )
        needed = -(self.puzzle_emb_ndim // -self.hidden_size)  # the fewest positions that hold the embedding
        if self.puzzle_emb_ndim == 0:
            need(
                self.puzzle_emb_len == 0,
                "puzzle_emb_len",
                "must be 0 when arch.puzzle_emb_ndim is 0 (no prefix)",
            )
        elif self.puzzle_emb_len != 0:
            need(
                self.puzzle_emb_len >= needed,
                "puzzle_emb_len",
                f"is too short for the puzzle embedding: puzzle_emb_ndim {self.puzzle_emb_ndim} needs at least "
                f"{needed} positions of hidden_size {self.hidden_size} (or 0 for exactly that)",
            )
        for key in ("batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.puzzle_emb_len == 0:
            object.__setattr__(self, "puzzle_emb_len", needed)

    @property
    def total_len(self) -> int:
        """Positions the model sees: the puzzle-embedding prefix, then the sequence."""
        return self.seq_len + self.puzzle_emb_len


@dataclass(frozen=True)
class QHaltingConfig(ModelConfig):
    """The recurrent architectures' keys (HRM, TRM): cycles per segment and Q-head halting (hrm.models.act)."""

    H_cycles: int = 2
    L_cycles: int = 2
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    no_ACT_continue: bool = False  # True (TRM): halt on q_halt > 0, no target-Q pass, no q_continue loss

    has_q_head: ClassVar[bool] = True

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise UserError(f"params.yaml: arch.{key} {rule} (got {getattr(self, key)!r})")

        super().__post_init__()
        need(self.halt_max_steps >= 1, "halt_max_steps", "must be at least 1")
        need(0.0 <= self.halt_exploration_prob <= 1.0, "halt_exploration_prob", "must be in [0, 1]")

    def target_q_blocks(self, forward_blocks: int) -> int:
        """HRM's Q-learning runs every block a second time for the target Q (none with no_ACT_continue or a
        single segment)."""
        return forward_blocks if (not self.no_ACT_continue and self.halt_max_steps > 1) else 0
