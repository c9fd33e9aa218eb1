"""HRM ACT v1 (Wang et al. 2025, sapientinc/HRM), top to bottom in the paper's order.

1. configuration          2. input embedding (tokens + puzzle-embedding prefix)
3. H and L modules         4. the inner model: fixed initial states, the one-step gradient, the heads
5. the ACT carry           6. the ACT wrapper (halting, exploration, target-Q)
7. loading official checkpoints

Parameter names and shapes equal the official checkpoint layout (see ../shared/reference/hrm-model.md), so
`load_official_checkpoint` takes an official `.pt` as is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrm.io import UserError
from hrm.models.layers import (
    CastedEmbedding,
    CastedLinear,
    CosSin,
    PostNormBlock,
    RotaryEmbedding,
    trunc_normal_init_,
)
from hrm.models.sparse_embedding import PuzzleEmbedding

# ---------------------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_forward_dtype(name: str, device: torch.device | str | None) -> torch.dtype:
    """`auto` = bf16 on CUDA, fp32 elsewhere (the rule lives in `hrm.runtime.dtype_name`)."""
    from hrm.runtime import dtype_name

    device_type = torch.device(device).type if device is not None else "cpu"
    return _DTYPES[dtype_name(name, device_type)]


@dataclass(frozen=True)
class HRMConfig:
    """Everything that shapes the model: `arch` from params.yaml plus the dataset's sizes."""

    batch_size: int  # per process; the sparse puzzle embedding's gradient buffer has this many rows
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    H_cycles: int = 2
    L_cycles: int = 2
    H_layers: int = 4
    L_layers: int = 4
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    pos_encodings: str = "rope"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    puzzle_emb_ndim: int = 512
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    forward_dtype: torch.dtype = torch.float32

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
    ) -> HRMConfig:
        """Build from the `arch` section; unknown or ill-typed keys fail with the key's name."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        sized = {"batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers", "forward_dtype"}
        values: dict[str, Any] = {}
        for key, value in arch.items():
            if key in ("name", "loss", "forward_dtype"):
                continue
            if key not in fields or key in sized:
                raise UserError(f"params.yaml: arch.{key} is not a setting of the HRM/transformer model")
            expected = type(fields[key].default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise UserError(
                    f"params.yaml: arch.{key} must be {expected.__name__}, got {value!r} ({type(value).__name__})"
                )
            values[key] = value
        config = cls(
            batch_size=batch_size,
            seq_len=seq_len,
            vocab_size=vocab_size,
            num_puzzle_identifiers=num_puzzle_identifiers,
            forward_dtype=resolve_forward_dtype(str(arch.get("forward_dtype", "auto")), device),
            **values,
        )
        config.validate()
        return config

    def validate(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise UserError(f"params.yaml: arch.{key} {rule} (got {getattr(self, key)!r})")

        for key in ("H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size", "num_heads"):
            need(getattr(self, key) >= 1, key, "must be at least 1")
        need(self.hidden_size % self.num_heads == 0, "num_heads", "must divide hidden_size")
        need((self.hidden_size // self.num_heads) % 2 == 0, "num_heads", "must leave an even head dim")
        need(self.expansion > 0, "expansion", "must be positive")
        need(self.pos_encodings in ("rope", "learned"), "pos_encodings", "must be rope or learned")
        need(self.puzzle_emb_ndim >= 0, "puzzle_emb_ndim", "must be >= 0")
        need(self.halt_max_steps >= 1, "halt_max_steps", "must be at least 1")
        need(0.0 <= self.halt_exploration_prob <= 1.0, "halt_exploration_prob", "must be in [0, 1]")
        for key in ("batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")

    @property
    def puzzle_emb_len(self) -> int:
        """Positions the puzzle embedding occupies in front of the sequence: ceil(ndim / hidden)."""
        return -(self.puzzle_emb_ndim // -self.hidden_size)

    @property
    def total_len(self) -> int:
        return self.seq_len + self.puzzle_emb_len


# ---------------------------------------------------------------------------------------------------------
# 2. Input embedding
# ---------------------------------------------------------------------------------------------------------


class InputEmbedding(nn.Module):
    """Token embedding (x sqrt(hidden)) with the puzzle embedding as a prefix; positions if learned.

    A mixin of the inner models: it owns `embed_tokens`, `puzzle_emb`, `rotary_emb`/`embed_pos` directly so
    that their state_dict keys sit at `model.inner.*` as in HRM.
    """

    config: HRMConfig

    def _build_embeddings(self) -> None:
        config = self.config
        self.embed_scale = math.sqrt(config.hidden_size)
        init_std = 1.0 / self.embed_scale  # so that the scaled embedding has unit std
        self.embed_tokens = CastedEmbedding(
            config.vocab_size, config.hidden_size, init_std=init_std, cast_to=config.forward_dtype
        )
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(
                config.num_puzzle_identifiers,
                config.puzzle_emb_ndim,
                batch_size=config.batch_size,
                cast_to=config.forward_dtype,
            )
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(
                config.hidden_size // config.num_heads, config.total_len, config.rope_theta
            )
        else:
            self.embed_pos = CastedEmbedding(
                config.total_len, config.hidden_size, init_std=init_std, cast_to=config.forward_dtype
            )

    def cos_sin(self) -> CosSin | None:
        return self.rotary_emb() if self.config.pos_encodings == "rope" else None

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        config = self.config
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if config.puzzle_emb_ndim > 0:
            prefix = self.puzzle_emb(puzzle_identifiers)
            pad = config.puzzle_emb_len * config.hidden_size - prefix.shape[-1]
            if pad > 0:
                prefix = torch.nn.functional.pad(prefix, (0, pad))
            prefix = prefix.view(-1, config.puzzle_emb_len, config.hidden_size)
            embedding = torch.cat((prefix, embedding), dim=-2)
        if config.pos_encodings == "learned":
            # 1/sqrt(2) keeps the sum of two unit-variance embeddings at unit variance (as HRM).
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(config.forward_dtype))
        return self.embed_scale * embedding


# ---------------------------------------------------------------------------------------------------------
# 3. The H (slow, abstract) and L (fast, detailed) reasoning modules
# ---------------------------------------------------------------------------------------------------------


class ReasoningModule(nn.Module):
    """A stack of post-norm blocks that first adds its input injection to its state."""

    def __init__(self, config: HRMConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PostNormBlock(config.hidden_size, config.num_heads, config.expansion, config.rms_norm_eps)
            for _ in range(num_layers)
        )

    # `train.activation_checkpointing`: with the graph on (the one-step gradient), each block's activations
    # are dropped after the forward and recomputed in backward; the values are the same, memory is lower.
    activation_checkpointing: bool = False

    def forward(self, state: torch.Tensor, injection: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        hidden = state + injection
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                from torch.utils.checkpoint import checkpoint

                hidden = checkpoint(layer, hidden, cos_sin, use_reentrant=False)
            else:
                hidden = layer(hidden, cos_sin)
        return hidden


# ---------------------------------------------------------------------------------------------------------
# 4. The inner model: one ACT segment = H_cycles x L_cycles updates, only the last L and H with gradient
# ---------------------------------------------------------------------------------------------------------


class HRMInner(InputEmbedding, nn.Module):
    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings()
        self.H_level = ReasoningModule(config, config.H_layers)
        self.L_level = ReasoningModule(config, config.L_layers)
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        # Fixed initial states (not trained): every fresh sequence starts from the same z_H, z_L.
        # Stored fp32 and cast on use (HRM stores them in the forward dtype; loading converts).
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(config.hidden_size)), persistent=True)
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(config.hidden_size)), persistent=True)
        # Q-head starts at "never halt" (sigmoid(-5) ~ 0.007) so early training runs long segments.
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    def reset_states(
        self, reset: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows where `reset` is set start again from H_init / L_init; the others keep their state."""
        dtype = self.config.forward_dtype
        flag = reset.view(-1, 1, 1)
        return (
            torch.where(flag, self.H_init.to(dtype), z_H),
            torch.where(flag, self.L_init.to(dtype), z_L),
        )

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

        # The one-step gradient: a single L and H update with the graph (the paper's 1-step approximation
        # of the fixed-point gradient).
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)

        logits = self.lm_head(z_H)[:, config.puzzle_emb_len :] if with_logits else None
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return z_H.detach(), z_L.detach(), logits, q_logits[..., 0], q_logits[..., 1]


# ---------------------------------------------------------------------------------------------------------
# 5. The ACT carry: what persists between segments (and goes into a checkpoint)
# ---------------------------------------------------------------------------------------------------------


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

        def get(key: str) -> torch.Tensor:
            return state[key].to(device) if device is not None else state[key]

        return cls(
            z_H=get("z_H") if "z_H" in state else None,
            z_L=get("z_L") if "z_L" in state else None,
            steps=get("steps"),
            halted=get("halted"),
            current_data={k[len(prefix) :]: get(k) for k in state if k.startswith(prefix)},
        )


def _keep_or_take(halted: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Row-wise: the new batch's value where the row halted, the old one elsewhere."""
    return torch.where(halted.view((-1,) + (1,) * (new.ndim - 1)), new, old)


# ---------------------------------------------------------------------------------------------------------
# 6. The ACT wrapper: halting by Q-learning, exploration, target-Q from a second forward
# ---------------------------------------------------------------------------------------------------------


class HRMACT(nn.Module):
    """One call = one ACT segment for every row of the batch."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = HRMInner(config)

    @property
    def puzzle_emb(self) -> PuzzleEmbedding | None:
        return getattr(self.inner, "puzzle_emb", None)

    @property
    def eval_segments(self) -> int:
        """Segments an eval pass runs: always halt_max_steps (the Q-head never stops eval early)."""
        return self.config.halt_max_steps

    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> ACTCarry:
        """Every row starts halted, so the first call resets it and takes the batch's example."""
        size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        shape = (size, self.config.total_len, self.config.hidden_size)
        dtype = self.config.forward_dtype
        return ACTCarry(
            z_H=torch.zeros(shape, dtype=dtype, device=device),
            z_L=torch.zeros(shape, dtype=dtype, device=device),
            steps=torch.zeros(size, dtype=torch.int32, device=device),
            halted=torch.ones(size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def draw_row_randomness(self, rows: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The per-row draws of one training segment (halt exploration), on the generator's device.

        The trainer draws them for the whole global batch once per step and gives each process and
        micro-batch its slice, so the numbers a row sees do not depend on how the batch is split.
        """
        if self.config.halt_max_steps <= 1:
            return {}
        shape = torch.Size([rows])
        return {
            "explore": _uniform(shape, generator, torch.device("cpu")),
            "explore_min_steps": _randint(
                2, self.config.halt_max_steps + 1, shape, generator, torch.device("cpu")
            ),
        }

    def forward(
        self,
        carry: ACTCarry,
        batch: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        draws: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        """One segment. Training draws come from `draws` (this batch's rows) or, if None, from `generator`."""
        config = self.config
        assert carry.z_H is not None and carry.z_L is not None
        # Halted rows: fresh state, new example, step count 0. Running rows: unchanged.
        z_H, z_L = self.inner.reset_states(carry.halted, carry.z_H, carry.z_L)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = {k: _keep_or_take(carry.halted, batch[k], v) for k, v in carry.current_data.items()}

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
                halted = halted | (q_halt > q_continue)
                # Exploration: some rows must run a random minimum number of segments first.
                if draws is None:
                    draws = self.draw_row_randomness(q_halt.shape[0], generator)
                explore = draws["explore"].to(q_halt.device) < config.halt_exploration_prob
                min_steps = explore * draws["explore_min_steps"].to(steps.device)
                halted = halted & (steps >= min_steps)
                # Target for q_continue: value of the next state, bootstrapped from a second forward (no
                # replay buffer or target network; the batch is many parallel environments, as in PQN).
                _, _, _, next_q_halt, next_q_continue = self.inner(
                    z_H, z_L, data["inputs"], data["puzzle_identifiers"], with_logits=False
                )
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                )
        return ACTCarry(z_H, z_L, steps.to(torch.int32), halted, data), outputs


def _uniform(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Draw on the generator's device (a CPU generator can drive a CUDA model), then move."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _randint(
    low: int, high: int, shape: torch.Size, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=gen_device, dtype=torch.int32).to(
        device
    )


# ---------------------------------------------------------------------------------------------------------
# 7. Official checkpoints
# ---------------------------------------------------------------------------------------------------------


def load_official_checkpoint(
    head: nn.Module, path_or_state_dict: str | Path | Mapping[str, torch.Tensor]
) -> None:
    """Load an official HRM checkpoint (state_dict of its loss head) or one of ours into `head`.

    Strips the `_orig_mod.` prefix torch.compile adds; refuses any missing/unexpected key or shape mismatch
    with a UserError that lists them, instead of loading half a model.
    """
    source = str(path_or_state_dict) if isinstance(path_or_state_dict, str | Path) else "state_dict"
    if isinstance(path_or_state_dict, str | Path):
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise UserError(f"{path}: checkpoint file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise UserError(f"{path}: not a readable PyTorch state_dict ({err})") from err
    else:
        state = path_or_state_dict
    if not isinstance(state, Mapping):
        raise UserError(
            f"{source}: expected a state_dict (mapping of names to tensors), got {type(state).__name__}"
        )
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}

    expected = head.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"{source}: checkpoint does not fit the model built from params.yaml arch"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", wrong_shape),
        ):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise UserError("\n".join(lines))
    head.load_state_dict(state, strict=True)
