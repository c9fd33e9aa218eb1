"""HRM ACT v1 and the transformer baseline: layout, one-step gradient, ACT halting, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hrm.io import UserError
from hrm.models import ARCHITECTURES, ACTCarry, build_model, load_official_checkpoint
from hrm.models.layers import (
    Attention,
    PostNormBlock,
    RotaryEmbedding,
    apply_rotary,
    swiglu_width,
    trunc_normal_init_,
)
from tests.conftest import arch, tiny_arch

SEQ, VOCAB, IDS = 8, 24, 5
# What the halting tests count on, unless a test says otherwise: 4 segments at most, and Q alone deciding when a
# row halts (no exploration).
HALTING = {"halt_max_steps": 4, "halt_exploration_prob": 0.0}
# TRM's official recipe (params.yaml's arch comment): its paper-size layout and parameter count.
TRM_RECIPE = {"H_cycles": 3, "L_cycles": 4, "L_layers": 2, "puzzle_emb_len": 16, "no_ACT_continue": True}


def tiny(batch_size: int = 4, seed: int = 0, name: str = "hrm_v1", **overrides):
    """A tiny-profile model of architecture `name` (`HALTING` and `overrides` on top) on SEQ x VOCAB batches."""
    return build_model(
        tiny_arch(name, **{**HALTING, **overrides}),
        seq_len=SEQ,
        vocab_size=VOCAB,
        num_puzzle_identifiers=IDS,
        batch_size=batch_size,
        seed=seed,
    )


def make_batch(batch_size: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(1, 23, (batch_size, SEQ), generator=g, dtype=torch.int32),
        "labels": torch.randint(1, VOCAB, (batch_size, SEQ), generator=g),
        "puzzle_identifiers": torch.randint(1, IDS, (batch_size,), generator=g, dtype=torch.int32),
    }


def set_q_bias(head, halt: float, cont: float) -> None:
    with torch.no_grad():
        head.model.inner.q_head.bias.copy_(torch.tensor([halt, cont]))


# --------------------------------------------------------------------------------------- layout


def official_layout(
    vocab: int,
    identifiers: int,
    hidden: int = 512,
    layers: int = 4,
    levels: tuple[str, ...] = ("H_level.", "L_level."),
    recurrent: bool = True,
) -> dict[str, tuple]:
    """The key set and shapes of an official checkpoint, written out from hrm-model.md (TRM, trm-model.md:
    the same keys with one `L_level` stack). The transformer baseline has no official checkpoint: its layout is
    HRM's with one stack of blocks (level "") and no initial states or Q head (`recurrent` False)."""
    inner = "model.inner."
    expected = {
        inner + "embed_tokens.embedding_weight": (vocab, hidden),
        inner + "lm_head.weight": (vocab, hidden),
        inner + "puzzle_emb.weights": (identifiers, hidden),
    }
    if recurrent:
        expected |= {
            inner + "H_init": (hidden,),
            inner + "L_init": (hidden,),
            inner + "q_head.weight": (2, hidden),
            inner + "q_head.bias": (2,),
        }
    for level in levels:
        for i in range(layers):
            prefix = f"{inner}{level}layers.{i}."
            expected[prefix + "self_attn.qkv_proj.weight"] = (3 * hidden, hidden)
            expected[prefix + "self_attn.o_proj.weight"] = (hidden, hidden)
            expected[prefix + "mlp.gate_up_proj.weight"] = (2 * 1536, hidden)
            expected[prefix + "mlp.down_proj.weight"] = (hidden, 1536)
    return expected


# Each architecture at its paper size (params.yaml's arch, the paper's HRM; TRM's recipe) -> its checkpoint's layout.
PAPER_LAYOUTS = {
    "hrm_v1": ({}, official_layout(vocab=24, identifiers=5)),
    "trm": (TRM_RECIPE, official_layout(vocab=24, identifiers=5, layers=2, levels=("L_level.",))),
    "transformer": ({}, official_layout(vocab=24, identifiers=5, layers=8, levels=("",), recurrent=False)),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_state_dict_equals_official_layout(name):
    overrides, expected = PAPER_LAYOUTS[name]
    head = build_model(
        arch(name=name, **overrides),
        seq_len=1600,
        vocab_size=24,
        num_puzzle_identifiers=5,
        batch_size=2,
        device="meta",
    )
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == expected


def test_parameter_count_matches_hrm_maze_model():
    # HRM's Maze model (vocab 6, seq 900, one identifier) is reported as 27.27M parameters.
    head = build_model(
        arch(), seq_len=900, vocab_size=6, num_puzzle_identifiers=1, batch_size=2, device="meta"
    )
    assert sum(p.numel() for p in head.parameters()) == 27_270_146


def test_learned_positions_add_one_table():
    head = tiny(pos_encodings="learned")
    state = head.state_dict()
    assert tuple(state["model.inner.embed_pos.embedding_weight"].shape) == (SEQ + 1, head.config.hidden_size)
    assert not any("rotary" in k for k in state)


def test_puzzle_prefix_takes_ceil_ndim_over_hidden_positions():
    head = tiny(hidden_size=32, puzzle_emb_ndim=40)  # 40 / 32 -> 2 prefix positions
    assert head.model.config.puzzle_emb_len == 2
    batch = make_batch()
    head.eval()
    carry, _, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert outputs["logits"].shape == (4, SEQ, VOCAB)
    assert carry.z_H.shape == (4, SEQ + 2, 32)


def test_swiglu_width_rule():
    assert swiglu_width(512, 4) == 1536
    assert swiglu_width(32, 4) == 256
    assert swiglu_width(384, 4) == 1024


def test_truncated_normal_has_requested_std_and_bounds():
    values = trunc_normal_init_(torch.empty(200_000), std=1.0, generator=torch.Generator().manual_seed(0))
    assert abs(values.std().item() - 1.0) < 0.01
    bound = 2.0 / 0.8796  # +-2 sigma of the unit normal, rescaled by the truncated std
    assert values.abs().max().item() <= bound + 1e-4


def test_q_head_init_and_fixed_states():
    head = tiny()
    inner = head.model.inner
    assert torch.count_nonzero(inner.q_head.weight) == 0
    assert inner.q_head.bias.tolist() == [-5.0, -5.0]
    assert not inner.H_init.requires_grad and "model.inner.H_init" in head.state_dict()
    assert torch.count_nonzero(inner.puzzle_emb.weights) == 0
    assert "model.inner.H_init" not in dict(head.named_parameters())


# --------------------------------------------------------------------------------------- attention


def test_sdpa_attention_equals_plain_softmax_attention():
    torch.manual_seed(0)
    attention = Attention(hidden_size=32, num_heads=4)
    rope = RotaryEmbedding(head_dim=8, max_positions=6, theta=10000.0)
    x = torch.randn(2, 6, 32)
    got = attention(x, rope())

    qkv = attention.qkv_proj(x).view(2, 6, 12, 8)
    q, k, v = qkv[:, :, :4], qkv[:, :, 4:8], qkv[:, :, 8:]
    q, k = apply_rotary(q, k, rope())
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)  # no mask: non-causal
    expected = attention.o_proj((weights @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_rope_rotates_relative_positions():
    # Scores after RoPE depend only on the position difference: shift both q and k, scores stay.
    rope = RotaryEmbedding(head_dim=8, max_positions=10, theta=10000.0)
    cos, sin = rope()
    q = torch.randn(1, 1, 1, 8).expand(1, 10, 1, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 10, 1, 8)
    q_rot, k_rot = apply_rotary(q, k, (cos, sin))
    score_0_3 = (q_rot[0, 0, 0] * k_rot[0, 3, 0]).sum()
    score_4_7 = (q_rot[0, 4, 0] * k_rot[0, 7, 0]).sum()
    torch.testing.assert_close(score_0_3, score_4_7, rtol=1e-5, atol=1e-5)


def test_rope_is_bit_identical_to_the_rotate_half_formula():
    # The signed-sin formulation (CPU speed-up) must be the textbook x*cos + rotate_half(x)*sin, bit for bit.
    head_dim, positions, theta = 64, 37, 10000.0
    rope = RotaryEmbedding(head_dim=head_dim, max_positions=positions, theta=theta)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().unsqueeze(-2), angles.sin().unsqueeze(-2)

    def textbook(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-second, first), dim=-1) * sin

    q, k = torch.randn(3, positions, 4, head_dim), torch.randn(3, positions, 4, head_dim)
    q_rot, k_rot = apply_rotary(q, k, rope())
    assert torch.equal(q_rot, textbook(q)) and torch.equal(k_rot, textbook(k))


def test_block_without_graph_is_bit_identical_to_block_with_graph():
    # The no-grad path works in place (residual into the sublayer output, RMSNorm in place): same bits.
    torch.manual_seed(0)
    block = PostNormBlock(hidden_size=64, num_heads=4, expansion=4, norm_eps=1e-5)
    rope = RotaryEmbedding(head_dim=16, max_positions=9, theta=10000.0)
    x = torch.randn(3, 9, 64)
    with_graph = block(x, rope())
    assert with_graph.requires_grad
    with torch.no_grad():
        without_graph = block(x, rope())
    with torch.inference_mode():
        inference = block(x, rope())
    assert torch.equal(with_graph.detach(), without_graph) and torch.equal(without_graph, inference)


def test_target_q_pass_without_lm_head_gives_the_same_q_values():
    head = tiny()
    head.train()
    batch = make_batch()
    carry = head.model.initial_carry(batch)
    z_H, z_L = head.model.inner.reset_states(carry.halted, carry.z_H, carry.z_L)
    args = (z_H, z_L, batch["inputs"], batch["puzzle_identifiers"])
    with torch.no_grad():
        full = head.model.inner(*args)
        short = head.model.inner(*args, with_logits=False)
    assert short[2] is None and full[2] is not None
    for a, b in zip(full[:2] + full[3:], short[:2] + short[3:], strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------- one-step gradient


def _graph_size(tensor: torch.Tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("cycles", [(1, 1), (2, 2), (3, 4)])
def test_only_last_L_and_H_update_carry_gradient(cycles):
    h_cycles, l_cycles = cycles
    head = tiny(H_cycles=h_cycles, L_cycles=l_cycles)
    head.train()
    inner = head.model.inner
    calls: list[tuple[str, bool]] = []
    for name in ("L_level", "H_level"):
        getattr(inner, name).register_forward_hook(
            lambda _m, _i, out, name=name: calls.append((name, out.requires_grad))
        )
    batch = make_batch()
    carry, loss, _, _, _ = head(carry=head.initial_carry(batch), batch=batch)
    main_pass = calls[: h_cycles * (l_cycles + 1)]  # the rest is the no-grad target-Q pass
    assert [n for n, _ in main_pass].count("L_level") == h_cycles * l_cycles
    assert [n for n, _ in main_pass].count("H_level") == h_cycles
    assert [grad for _, grad in main_pass] == [False] * (len(main_pass) - 2) + [True, True]
    assert main_pass[-2:] == [("L_level", True), ("H_level", True)]
    assert not carry.z_H.requires_grad and not carry.z_L.requires_grad


def test_autograd_graph_does_not_grow_with_cycles():
    sizes = []
    for cycles in (1, 2, 4):
        head = tiny(H_cycles=cycles, L_cycles=cycles)
        head.train()
        batch = make_batch()
        _, loss, _, _, _ = head(carry=head.initial_carry(batch), batch=batch)
        sizes.append(_graph_size(loss))
    assert sizes[0] == sizes[1] == sizes[2]


def test_gradient_reaches_every_parameter_and_the_puzzle_rows():
    head = tiny()
    head.train()
    batch = make_batch()
    carry = head.initial_carry(batch)
    set_q_bias(head, -5.0, 5.0)  # keep running so the second segment has a real carry
    for _ in range(2):
        carry, loss, _, _, _ = head(carry=carry, batch=batch)
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
    local_grad = head.puzzle_emb.local_weights.grad
    assert local_grad is not None and torch.count_nonzero(local_grad) > 0


# --------------------------------------------------------------------------------------- ACT


def _run_until_all_halted(head, batch, generator=None, limit=50):
    carry = head.initial_carry(batch)
    halt_steps = torch.zeros(batch["inputs"].shape[0], dtype=torch.int32)
    first_halt_seen = torch.zeros_like(halt_steps, dtype=torch.bool)
    for _ in range(limit):
        draws = head.draw_row_randomness(batch["inputs"].shape[0], generator)
        carry, _, _, _, all_halted = head(carry=carry, batch=batch, draws=draws)
        newly = carry.halted & ~first_halt_seen
        halt_steps[newly] = carry.steps[newly]
        first_halt_seen |= carry.halted
        if bool(first_halt_seen.all()):
            return halt_steps
    raise AssertionError("rows never halted")


@torch.no_grad()
def test_eval_always_runs_halt_max_steps_even_when_q_says_halt():
    head = tiny()
    head.eval()
    set_q_bias(head, 10.0, -10.0)  # Q strongly says "halt now"
    batch = make_batch()
    carry = head.initial_carry(batch)
    for segment in range(1, 5):
        carry, _, _, outputs, all_halted = head(carry=carry, batch=batch)
        assert "target_q_continue" not in outputs
        assert carry.steps.tolist() == [segment] * 4
        assert bool(all_halted) == (segment == 4)
        assert carry.halted.all() == (segment == 4)


def test_train_halts_when_q_halt_beats_q_continue():
    head = tiny()
    head.train()
    set_q_bias(head, 3.0, -3.0)
    assert _run_until_all_halted(head, make_batch()).tolist() == [1, 1, 1, 1]


def test_train_without_q_halt_runs_to_halt_max_steps():
    head = tiny()
    head.train()
    set_q_bias(head, -3.0, 3.0)
    assert _run_until_all_halted(head, make_batch()).tolist() == [4, 4, 4, 4]


def test_exploration_min_steps_are_within_2_and_halt_max_steps():
    batch_size = 64  # 4 equally likely values: all show up (seeded; chance of a miss ~ 4 * 0.75^64)
    head = tiny(batch_size=batch_size, halt_exploration_prob=1.0, halt_max_steps=5, H_cycles=1, L_cycles=1)
    head.train()
    set_q_bias(head, 3.0, -3.0)  # Q says halt at once: only exploration can delay it
    steps = _run_until_all_halted(head, make_batch(batch_size), generator=torch.Generator().manual_seed(0))
    assert set(steps.tolist()) == {2, 3, 4, 5}


def test_exploration_probability_is_respected():
    batch_size = 512
    head = tiny(batch_size=batch_size, halt_exploration_prob=0.25, halt_max_steps=5, H_cycles=1, L_cycles=1)
    head.train()
    set_q_bias(head, 3.0, -3.0)
    batch = make_batch(batch_size)
    draws = head.draw_row_randomness(batch_size, torch.Generator().manual_seed(0))
    carry, _, _, _, _ = head(carry=head.initial_carry(batch), batch=batch, draws=draws)
    # A row runs on after step 1 only if it explores (any min step count is >= 2): rate ~ 0.25.
    assert 0.18 < (~carry.halted).float().mean().item() < 0.32


def test_halted_rows_and_only_those_take_the_next_examples():
    head = tiny()
    head.train()
    set_q_bias(head, -3.0, 3.0)  # nobody halts by Q
    first, second = make_batch(seed=1), make_batch(seed=2)
    carry, _, _, _, _ = head(carry=head.initial_carry(first), batch=first)
    carry.halted = torch.tensor([True, False, True, False])
    carry.steps = torch.tensor([4, 1, 4, 1], dtype=torch.int32)
    old_states = (carry.z_H.clone(), carry.z_L.clone())

    # What the running rows must compute: the inner model from their own states and examples.
    inner = head.model.inner
    with torch.no_grad():
        z_H, z_L = inner.reset_states(carry.halted, *old_states)
        mixed = {
            k: torch.where(carry.halted.view(-1, *[1] * (v.ndim - 1)), second[k], v) for k, v in first.items()
        }
        _, _, expected_logits, _, _ = inner(z_H, z_L, mixed["inputs"], mixed["puzzle_identifiers"])

    new_carry, _, _, outputs, _ = head(carry=carry, batch=second, return_keys=["logits"])
    for key in first:
        assert torch.equal(new_carry.current_data[key][[0, 2]], second[key][[0, 2]]), key
        assert torch.equal(new_carry.current_data[key][[1, 3]], first[key][[1, 3]]), key
    assert new_carry.steps.tolist() == [1, 2, 1, 2]
    torch.testing.assert_close(outputs["logits"], expected_logits, rtol=1e-5, atol=1e-5)
    # Reset rows restart from the fixed initial states, the others keep theirs.
    assert torch.equal(z_H[0], inner.H_init.expand_as(z_H[0])) and torch.equal(
        z_L[2], inner.L_init.expand_as(z_L[2])
    )
    assert torch.equal(z_H[1], old_states[0][1]) and torch.equal(z_L[3], old_states[1][3])


def test_target_q_is_the_next_state_value():
    head = tiny(halt_max_steps=2)
    head.train()
    with torch.no_grad():
        # q depends on the state, too little for a row to halt before halt_max_steps (seeded: torch's global
        # generator starts from a random seed in each process)
        head.model.inner.q_head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    set_q_bias(head, -3.0, 3.0)
    batch = make_batch()
    carry = head.initial_carry(batch)
    inner = head.model.inner
    for segment in (1, 2):
        carry, _, _, outputs, _ = head(carry=carry, batch=batch, return_keys=["target_q_continue"])
        assert (
            carry.halted.tolist() == [segment == 2] * 4
        )  # no row restarts: its target is the next segment's
        with torch.no_grad():
            _, _, _, next_halt, next_continue = inner(
                carry.z_H, carry.z_L, carry.current_data["inputs"], carry.current_data["puzzle_identifiers"]
            )
        value = next_halt if segment == 2 else torch.maximum(next_halt, next_continue)
        torch.testing.assert_close(outputs["target_q_continue"], torch.sigmoid(value))


# --------------------------------------------------------------------------------------- state, determinism


def _train_run(name: str, seed: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    from hrm.optim import AdamATan2, SparseSignSGD

    head = tiny(seed=seed, name=name, halt_exploration_prob=0.5)
    head.train()
    optimizer = AdamATan2(head.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sparse = SparseSignSGD(head.puzzle_emb, lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    carry = None
    losses = []
    for step in range(4):
        batch = make_batch(seed=step)
        carry = carry or head.initial_carry(batch)
        draws = head.draw_row_randomness(batch["inputs"].shape[0], generator)
        carry, loss, _, _, _ = head(carry=carry, batch=batch, draws=draws)
        (loss / 4).backward()
        optimizer.step()
        sparse.step()
        optimizer.zero_grad()
        sparse.zero_grad()
        losses.append(loss.item())
    return losses, head.state_dict()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_two_seeded_cpu_runs_are_bit_identical(name):
    losses_a, state_a = _train_run(name, seed=3)
    assert all(math.isfinite(loss) for loss in losses_a)
    losses_b, state_b = _train_run(name, seed=3)
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    losses_c, _ = _train_run(name, seed=4)
    assert losses_c != losses_a


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_carry_state_round_trip_continues_identically(name):
    head = tiny(name=name, halt_exploration_prob=0.5)
    head.train()
    batch = make_batch()
    rows = batch["inputs"].shape[0]
    draws = head.draw_row_randomness(rows, torch.Generator().manual_seed(0))
    carry, _, _, _, _ = head(carry=head.initial_carry(batch), batch=batch, draws=draws)
    restored = ACTCarry.from_state(carry.to_state())
    draws = head.draw_row_randomness(rows, torch.Generator().manual_seed(9))
    with torch.no_grad():
        out_a = head(carry=carry, batch=make_batch(seed=5), draws=draws, return_keys=["logits"])
        out_b = head(carry=restored, batch=make_batch(seed=5), draws=draws, return_keys=["logits"])
    assert torch.equal(out_a[1], out_b[1])
    assert torch.equal(out_a[3]["logits"], out_b[3]["logits"])
    assert torch.equal(out_a[0].halted, out_b[0].halted)


def test_load_official_checkpoint_with_compile_prefix(tmp_path):
    source, target = tiny(seed=1), tiny(seed=2)
    official = {"_orig_mod." + k: v.clone() for k, v in source.state_dict().items()}
    official["_orig_mod.model.inner.H_init"] = official["_orig_mod.model.inner.H_init"].to(torch.bfloat16)
    path = tmp_path / "step_1000.pt"
    torch.save(official, path)
    load_official_checkpoint(target, path)
    for key, value in source.state_dict().items():
        expected = value.to(torch.bfloat16).float() if key.endswith("H_init") else value
        assert torch.equal(target.state_dict()[key], expected), key


def test_load_official_checkpoint_names_what_does_not_fit():
    head = tiny()
    state = dict(head.state_dict())
    del state["model.inner.q_head.bias"]
    state["model.inner.lm_head.weight"] = torch.zeros(7, head.config.hidden_size)
    state["model.inner.extra"] = torch.zeros(1)
    with pytest.raises(UserError) as err:
        load_official_checkpoint(head, state)
    message = str(err.value)
    assert "missing: model.inner.q_head.bias" in message
    assert "unexpected: model.inner.extra" in message
    hidden = head.config.hidden_size
    assert f"model.inner.lm_head.weight: checkpoint (7, {hidden}) vs model (24, {hidden})" in message


def test_load_official_checkpoint_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_official_checkpoint(tiny(), tmp_path / "nope.pt")


# --------------------------------------------------------------------------------------- config, dtype, baseline


def test_bad_arch_settings_name_the_key():
    with pytest.raises(UserError, match="arch.name"):
        tiny(name="gpt")
    with pytest.raises(UserError, match="arch.num_heads"):
        tiny(num_heads=5)
    with pytest.raises(UserError, match="arch.H_cycles"):
        tiny(H_cycles="two")
    with pytest.raises(UserError, match="arch.forward_dtype"):
        tiny(forward_dtype="fp8")
    with pytest.raises(UserError, match="arch.loss"):
        tiny(loss="mse")
    with pytest.raises(UserError, match="arch.depth"):
        tiny(depth=3)


def test_forward_dtype_auto_is_fp32_on_cpu_and_bf16_runs():
    assert tiny().model.config.forward_dtype == torch.float32
    head = tiny(forward_dtype="bfloat16")
    head.eval()
    batch = make_batch()
    carry, loss, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert outputs["logits"].dtype == torch.bfloat16 and carry.z_H.dtype == torch.bfloat16
    assert torch.isfinite(loss)
    assert head.model.inner.lm_head.weight.dtype == torch.float32  # master weights stay fp32


def test_training_batch_must_fill_the_puzzle_embedding_buffer():
    head = tiny(batch_size=4)
    head.train()
    batch = make_batch(3)
    with pytest.raises(ValueError, match="batch_size 4"):
        head(carry=head.initial_carry(batch), batch=batch)
    head.eval()
    with torch.no_grad():  # eval batches may be any size
        head(carry=head.initial_carry(batch), batch=batch)


def test_transformer_baseline_same_api_one_segment():
    head = tiny(name="transformer")
    hrm = tiny()
    keys = set(head.state_dict())
    assert "model.inner.layers.1.self_attn.qkv_proj.weight" in keys and "model.inner.H_init" not in keys
    # Same size as HRM's blocks, embeddings and LM head; no Q head.
    hrm_count = sum(p.numel() for p in hrm.parameters()) - hrm.model.inner.q_head.weight.numel() - 2
    assert sum(p.numel() for p in head.parameters()) == hrm_count
    head.train()
    batch = make_batch()
    carry, loss, metrics, outputs, all_halted = head(
        carry=head.initial_carry(batch), batch=batch, return_keys=["logits", "preds"]
    )
    assert bool(all_halted) and carry.steps.tolist() == [1, 1, 1, 1]
    assert metrics["count"].item() == 4 and metrics["steps"].item() == 4
    assert outputs["preds"].shape == (4, SEQ)
    loss.backward()
    assert head.puzzle_emb.local_weights.grad is not None
    carry2, *_ = head(carry=carry, batch=make_batch(seed=7))
    assert torch.equal(carry2.current_data["inputs"], make_batch(seed=7)["inputs"])


def test_softmax_loss_option():
    head = tiny(loss="softmax_cross_entropy")
    head.eval()
    batch = make_batch()
    with torch.no_grad():
        _, _, metrics, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    expected = (
        F.cross_entropy(outputs["logits"].transpose(1, 2), batch["labels"], reduction="none").mean(-1).sum()
    )
    torch.testing.assert_close(metrics["lm_loss"], expected)


def test_build_seed_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b = tiny(seed=7), tiny(seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.model.inner.lm_head.weight, tiny(seed=8).model.inner.lm_head.weight)


def test_moving_the_model_keeps_the_puzzle_gradient_buffer_a_leaf():
    head = tiny()
    head._apply(lambda t: t * 1)  # what .to(device/dtype) does to buffers: a new, non-leaf tensor
    local = head.puzzle_emb.local_weights
    assert local.is_leaf and local.requires_grad
    head.train()
    batch = make_batch()
    _, loss, _, _, _ = head(carry=head.initial_carry(batch), batch=batch)
    loss.backward()
    assert head.puzzle_emb.local_weights.grad is not None


def test_transformer_carry_has_no_latent_state():
    head = tiny(name="transformer")
    batch = make_batch()
    carry, *_ = head(carry=head.initial_carry(batch), batch=batch)
    state = carry.to_state()
    assert "z_H" not in state and set(state) >= {"steps", "halted", "current_data.inputs"}
    restored = ACTCarry.from_state(state)
    assert restored.z_H is None and torch.equal(restored.current_data["labels"], batch["labels"])


def test_params_yaml_arch_builds_the_paper_model():
    from pathlib import Path

    from hrm.config import load_params, section

    arch = section(load_params(Path(__file__).parent.parent / "params.yaml"), "arch")
    head = build_model(
        arch, seq_len=1600, vocab_size=24, num_puzzle_identifiers=5, batch_size=768, device="meta"
    )
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == official_layout(
        vocab=24, identifiers=5
    )
    config = head.model.config
    assert (config.H_cycles, config.L_cycles, config.halt_max_steps) == (2, 2, 16)
    assert config.forward_dtype == torch.float32  # auto on a non-CUDA device


def test_carry_from_incomplete_state_is_a_clear_error():
    head = tiny()
    batch = make_batch()
    state = head.initial_carry(batch).to_state()
    del state["current_data.labels"]
    with pytest.raises(UserError, match="current_data.labels"):
        ACTCarry.from_state(state)


# --------------------------------------------------------------------------------------- registry


def test_schema_arch_choices_are_the_registered_architectures():
    """params.schema.json names the architectures twice (arch.name, profiles' per_arch): both are the registry's."""
    from hrm.config import schema
    from hrm.models import ARCHITECTURES

    definitions = schema()["$defs"]
    assert sorted(definitions["arch"]["properties"]["name"]["enum"]) == sorted(ARCHITECTURES)
    assert sorted(definitions["profile"]["properties"]["per_arch"]["propertyNames"]["enum"]) == sorted(
        ARCHITECTURES
    )


def test_unknown_architecture_is_refused_with_the_registered_names():
    with pytest.raises(UserError, match=r"arch\.name must be one of hrm_v1, trm, transformer; got 'gpt'"):
        tiny(name="gpt")
