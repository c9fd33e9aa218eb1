"""Building blocks of every architecture, mirroring HRM's so official checkpoints load and behave the same: fp32
parameters cast to the forward dtype on use, weightless fp32 RMSNorm, fused bias-free qkv, post-norm blocks.
Attention goes through `scaled_dot_product_attention` (no FlashAttention build needed)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hrm.models.config import ModelConfig
from hrm.models.sparse_embedding import PuzzleEmbedding

CosSin = tuple[torch.Tensor, torch.Tensor]


def trunc_normal_init_(
    tensor: torch.Tensor, std: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Normal truncated at +-2 standard deviations whose *actual* std is `std` (HRM's and JAX's init;
    `nn.init.trunc_normal_` would come out about 12% too narrow)."""
    lower, upper = -2.0, 2.0
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        cdf_lower = math.erf(lower / sqrt2)
        cdf_upper = math.erf(upper / sqrt2)
        mass = (cdf_upper - cdf_lower) / 2
        density = (2 * math.pi) ** -0.5
        pdf_lower = density * math.exp(-0.5 * lower**2)
        pdf_upper = density * math.exp(-0.5 * upper**2)
        truncated_var = (
            1 - (upper * pdf_upper - lower * pdf_lower) / mass - ((pdf_upper - pdf_lower) / mass) ** 2
        )
        scale = std / math.sqrt(truncated_var)
        # Inverse-CDF sampling: uniform in erf space, then erfinv maps it to the truncated normal.
        tensor.uniform_(cdf_lower, cdf_upper, generator=generator)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * scale)
        tensor.clamp_(lower * scale, upper * scale)
    return tensor


def rms_norm(hidden_states: torch.Tensor, eps: float, in_place: bool = False) -> torch.Tensor:
    """Weightless RMSNorm in fp32 (bf16 squares lose too much), returned in the input dtype. `in_place`:
    scale an fp32 temporary itself (one allocation less, same arithmetic)."""
    input_dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    scale = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    if in_place and x is hidden_states:
        return x.mul_(scale)
    return (x * scale).to(input_dtype)


class CastedLinear(nn.Module):
    """Linear layer with fp32 master weights cast to the input's dtype; truncated LeCun-normal init."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features))
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `.to` of the same dtype returns the tensor itself; the check only skips the dispatch per call.
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return F.linear(x, weight, bias)


class CastedEmbedding(nn.Module):
    """Embedding table stored in fp32, looked up in the forward dtype. Key name `embedding_weight` as HRM."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype
    ) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """RoPE tables (non-persistent) as `(cos, signed_sin)`: sin with its first half negated, so that
    `rotate_half(x) * sin == swap_halves(x) * signed_sin` exactly and the activations need no negation."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        # Halves layout (rotate_half), as HRM/Llama: same rotation as interleaved pairs, permuted channels.
        sin = angles.sin()
        self.register_buffer("cos", torch.cat((angles.cos(), angles.cos()), dim=-1), persistent=False)
        self.register_buffer("signed_sin", torch.cat((-sin, sin), dim=-1), persistent=False)

    def forward(self) -> CosSin:
        return self.cos, self.signed_sin


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos_sin: CosSin) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q and k [B, S, heads, head_dim] in fp32, returned in their dtype: `x * cos + rotate_half(x) * sin`
    with rotate_half(x) = (-x2, x1) written as (x2, x1) * signed_sin (same products and sum: bit-identical)."""
    cos, signed_sin = cos_sin

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        x32 = x.to(cos.dtype)
        swapped = torch.cat((x32[..., half:], x32[..., :half]), dim=-1)
        return (x32 * cos.unsqueeze(-2) + swapped * signed_sin.unsqueeze(-2)).to(x.dtype)

    return rotate(q), rotate(k)


class Attention(nn.Module):
    """Non-causal multi-head self-attention: fused bias-free qkv, SDPA, bias-free output projection."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        batch, seq, hidden = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq, 3 * self.num_heads, self.head_dim)
        query, key, value = qkv.split(self.num_heads, dim=2)
        if cos_sin is not None:
            # Rotating q and k separately keeps each contiguous; as one [B, S, 2H, D] slice SDPA gets strided
            # inputs, measured slower at seq 1601.
            query, key = apply_rotary(query, key, cos_sin)
        # SDPA wants [B, heads, S, head_dim]; default scale is 1/sqrt(head_dim), as HRM.
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), is_causal=False
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, hidden))


def swiglu_width(hidden_size: int, expansion: float) -> int:
    """HRM's inner MLP width: round(expansion * hidden * 2/3), rounded up to a multiple of 256."""
    width = round(expansion * hidden_size * 2 / 3)
    return -(width // -256) * 256


class SwiGLU(nn.Module):
    """Gated MLP with one fused gate/up projection (key names as HRM: gate_up_proj, down_proj)."""

    def __init__(self, hidden_size: int, expansion: float) -> None:
        super().__init__()
        inner = swiglu_width(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inner, bias=False)
        self.down_proj = CastedLinear(inner, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        gated = F.silu(gate)
        # Without a graph nothing is saved for backward, so the product can overwrite silu's output.
        gated = gated * up if torch.is_grad_enabled() else gated.mul_(up)
        return self.down_proj(gated)


class PostNormBlock(nn.Module):
    """Post-norm block `h = norm(h + attn(h)); h = norm(h + mlp(h))`. With `mixing_len` (TRM's `mlp_t`) a
    SwiGLU across the `mixing_len` positions replaces attention, normalised over the positions as TRM does."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        expansion: float,
        norm_eps: float,
        mixing_len: int | None = None,
    ) -> None:
        super().__init__()
        self.mixing_len = mixing_len
        if mixing_len is None:
            self.self_attn = Attention(hidden_size, num_heads)
        else:
            self.mlp_t = SwiGLU(mixing_len, expansion)
        self.mlp = SwiGLU(hidden_size, expansion)
        self.norm_eps = norm_eps

    def forward(self, hidden_states: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        eps = self.norm_eps
        if self.mixing_len is not None:
            across = hidden_states.transpose(1, 2)  # [B, hidden, positions]
            hidden_states = rms_norm(across + self.mlp_t(across), eps).transpose(1, 2)
            return rms_norm(hidden_states + self.mlp(hidden_states), eps)
        if torch.is_grad_enabled():
            hidden_states = rms_norm(hidden_states + self.self_attn(hidden_states, cos_sin), eps)
            return rms_norm(hidden_states + self.mlp(hidden_states), eps)
        # No graph: add the residual into the sublayer's fresh output and normalise that buffer in place
        # (a + b == b + a exactly, so bit-identical to the branch above).
        hidden_states = rms_norm(
            self.self_attn(hidden_states, cos_sin).add_(hidden_states), eps, in_place=True
        )
        return rms_norm(self.mlp(hidden_states).add_(hidden_states), eps, in_place=True)


def post_norm_blocks(config: ModelConfig, num_layers: int) -> nn.ModuleList:
    """`num_layers` post-norm blocks at the model's width, mixing tokens by attention or by `mlp_t`."""
    mixing_len = config.total_len if config.mlp_t else None
    return nn.ModuleList(
        PostNormBlock(config.hidden_size, config.num_heads, config.expansion, config.rms_norm_eps, mixing_len)
        for _ in range(num_layers)
    )


class ReasoningModule(nn.Module):
    """A stack of post-norm blocks that first adds its input injection to its state (HRM's H/L, TRM's net)."""

    # `train.activation_checkpointing`: with the graph on, each block's activations are dropped after the
    # forward and recomputed in backward; same values, less memory.
    activation_checkpointing: bool = False

    def __init__(self, config: ModelConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = post_norm_blocks(config, num_layers)

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


class InputEmbedding:
    """Mixin of the inner models (so keys sit at `model.inner.*` as in official checkpoints): token embedding
    (x sqrt(hidden)) with the puzzle embedding as a prefix; positions if learned."""

    config: ModelConfig

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
        if inputs.shape[-1] != config.seq_len:
            built = (
                "arch.mlp_t is set: its sequence MLP was built for seq_len"  # one weight per position
                if config.mlp_t
                else "the model was built for seq_len"
            )
            raise ValueError(f"{built} {config.seq_len}; got a sequence of {inputs.shape[-1]}")
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


class RecurrentInner(InputEmbedding, nn.Module):
    """One ACT segment of a recurrent model (HRM, TRM): input embedding, the subclass's levels
    (`build_levels`, `segment`), LM and Q heads, and the fixed initial states H_init and L_init."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings()
        self.build_levels()
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        # Fixed initial states (not trained), stored fp32 and cast on use (HRM and TRM store the forward dtype).
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
        return torch.where(flag, self.H_init.to(dtype), z_H), torch.where(flag, self.L_init.to(dtype), z_L)

    def forward(
        self,
        z_H: torch.Tensor,
        z_L: torch.Tensor,
        inputs: torch.Tensor,
        puzzle_identifiers: torch.Tensor,
        with_logits: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The new (detached) z_H, z_L, the logits [B, L, V] of the sequence (None without `with_logits`: the
        target-Q pass reads only the Q-head), and q_halt, q_continue in fp32 from position 0."""
        cos_sin = self.cos_sin()
        x = self.input_embeddings(inputs, puzzle_identifiers)
        z_H, z_L = self.segment(z_H, z_L, x, cos_sin)
        logits = self.lm_head(z_H)[:, self.config.puzzle_emb_len :] if with_logits else None
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return z_H.detach(), z_L.detach(), logits, q_logits[..., 0], q_logits[..., 1]
