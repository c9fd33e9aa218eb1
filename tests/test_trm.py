"""TRM (arch.name: trm): official layout, full gradient through the last recursion only, halting rules.

The official code was compared outside the repo (same weights: identical outputs, losses, halting, gradients);
here the semantics are checked against a hand-written recursion and hand-set Q values.
"""

from __future__ import annotations

import pytest
import torch

from hrm.io import UserError
from hrm.models import build_model, load_official_checkpoint
from hrm.models.layers import rms_norm, swiglu_width
from tests.conftest import arch
from tests.test_models import (
    SEQ,
    TRM_RECIPE,
    VOCAB,
    _graph_size,
    _run_until_all_halted,
    make_batch,
    set_q_bias,
    tiny,
)

# What these tests count on, unless a test says otherwise: a puzzle prefix of 2 positions (the logits drop the
# first 2), two blocks in TRM's network (as in its recipe), TRM's halting rule; `tiny` adds test_models' HALTING.
TRM = {"name": "trm", "puzzle_emb_len": 2, "L_layers": 2, "no_ACT_continue": True}


def trm(batch_size: int = 4, seed: int = 0, **overrides):
    return tiny(batch_size, seed, **{**TRM, **overrides})


# --------------------------------------------------------------------------------------- layout


def paper_trm(**overrides):
    return build_model(
        arch(name="trm", **{**TRM_RECIPE, **overrides}),
        seq_len=1600,
        vocab_size=24,
        num_puzzle_identifiers=5,
        batch_size=2,
        device="meta",
    )


def test_parameter_count_and_length_of_the_paper_trm():
    head = paper_trm()  # its layout: test_models.test_state_dict_equals_official_layout[trm]
    assert len(head.state_dict()) == 15
    assert sum(p.numel() for p in head.parameters()) == 6_841_346  # measured from the official code
    assert head.config.total_len == 1616


def test_mlp_t_replaces_attention_with_a_sequence_mlp():
    head = paper_trm(mlp_t=True)
    keys = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert not any("self_attn" in k for k in keys)
    width = swiglu_width(1616, 4)
    assert keys["model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight"] == (2 * width, 1616)
    assert keys["model.inner.L_level.layers.1.mlp_t.down_proj.weight"] == (1616, width)


def test_mlp_t_block_mixes_positions_and_normalises_over_them():
    head = trm(mlp_t=True)
    block = head.model.inner.L_level.layers[0]
    x = torch.randn(2, SEQ + 2, head.config.hidden_size)
    across = x.transpose(1, 2)
    gate, up = (across @ block.mlp_t.gate_up_proj.weight.T).chunk(2, dim=-1)
    mixed = (torch.nn.functional.silu(gate) * up) @ block.mlp_t.down_proj.weight.T
    h = across + mixed
    h = (h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-5)).transpose(1, 2)  # over positions
    expected = rms_norm(h + block.mlp(h), 1e-5)
    torch.testing.assert_close(block(x, None), expected, rtol=1e-5, atol=1e-5)


def test_official_checkpoint_with_bf16_initial_states_loads():
    source, target = trm(seed=1), trm(seed=2)
    official = {"_orig_mod." + k: v.clone() for k, v in source.state_dict().items()}
    for key in ("H_init", "L_init"):  # TRM stores them in its forward dtype
        official[f"_orig_mod.model.inner.{key}"] = official[f"_orig_mod.model.inner.{key}"].to(torch.bfloat16)
    load_official_checkpoint(target, official)
    assert torch.equal(
        target.state_dict()["model.inner.lm_head.weight"], source.state_dict()["model.inner.lm_head.weight"]
    )
    with pytest.raises(UserError, match="H_level"):  # an HRM checkpoint is refused, naming what does not fit
        load_official_checkpoint(
            target,
            tiny(name="hrm_v1").state_dict(),
        )


# --------------------------------------------------------------------------------------- recursion and gradient


def _level_calls(head) -> list[bool]:
    """requires_grad of every L_level output, in call order (TRM's only network)."""
    calls: list[bool] = []
    head.model.inner.L_level.register_forward_hook(lambda _m, _i, out: calls.append(out.requires_grad))
    return calls


@pytest.mark.parametrize("cycles", [(1, 1), (2, 3), (3, 2)])
def test_gradient_flows_through_the_whole_last_recursion_only(cycles):
    h_cycles, l_cycles = cycles
    head = trm(H_cycles=h_cycles, L_cycles=l_cycles)
    head.train()
    calls = _level_calls(head)
    batch = make_batch()
    carry, loss, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    per_cycle = l_cycles + 1  # L_cycles latent updates and one answer update, all by the same network
    assert calls == [False] * ((h_cycles - 1) * per_cycle) + [True] * per_cycle  # and no second forward
    assert not carry.z_H.requires_grad and not carry.z_L.requires_grad


def _reference_segment(inner, z_H, z_L, x, detach_before_last: bool):
    """TRM's recursion written out by hand from the paper, layer by layer (RoPE tables from the model)."""
    cos_sin = inner.cos_sin()

    def net(state, injection):
        h = state + injection
        for block in inner.L_level.layers:
            h = block(h, cos_sin)
        return h

    for cycle in range(inner.config.H_cycles):
        if detach_before_last and cycle == inner.config.H_cycles - 1:
            z_H, z_L = z_H.detach(), z_L.detach()
        for _ in range(inner.config.L_cycles):
            z_L = net(z_L, z_H + x)
        z_H = net(z_H, z_L)
    return z_H, z_L


def test_outputs_and_gradients_equal_the_hand_written_recursion():
    head = trm(H_cycles=3, L_cycles=2)
    head.train()
    inner = head.model.inner
    with torch.no_grad():
        inner.q_head.weight.normal_(0, 0.3)
    batch = make_batch()
    carry = head.initial_carry(batch)
    z_H0, z_L0 = inner.reset_states(carry.halted, carry.z_H, carry.z_L)
    _, loss, _, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits"])
    loss.backward()
    ours = {k: p.grad.clone() for k, p in head.named_parameters()}

    def reference_grads(detach_before_last: bool):
        head.zero_grad(set_to_none=True)
        x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, _ = _reference_segment(inner, z_H0, z_L0, x, detach_before_last)
        logits = z_H @ inner.lm_head.weight.T
        q = z_H[:, 0] @ inner.q_head.weight.T + inner.q_head.bias
        labels = batch["labels"]
        ref_loss = head.loss_fn(logits[:, 2:], labels).mean(-1).sum()
        correct = (logits[:, 2:].argmax(-1) == labels).all(-1).float()
        ref_loss = ref_loss + 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(
            q[:, 0], correct, reduction="sum"
        )
        ref_loss.backward()
        return (
            logits[:, 2:].detach(),
            q[:, 0].detach(),
            {k: p.grad.clone() for k, p in head.named_parameters()},
        )

    logits, q_halt, truncated = reference_grads(detach_before_last=True)
    torch.testing.assert_close(outputs["logits"], logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["q_halt_logits"], q_halt, rtol=1e-5, atol=1e-5)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, truncated[name], rtol=1e-4, atol=1e-6, msg=name)
    # Back-propagating through every cycle would give other gradients: the truncation is real.
    _, _, full = reference_grads(detach_before_last=False)
    name = "model.inner.L_level.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(full[name], truncated[name], rtol=1e-3, atol=1e-6)


def test_graph_size_does_not_depend_on_H_cycles_but_grows_with_L_cycles():
    def size(h_cycles: int, l_cycles: int) -> int:
        head = trm(H_cycles=h_cycles, L_cycles=l_cycles)
        head.train()
        batch = make_batch()
        _, loss, _, _, _ = head(carry=head.initial_carry(batch), batch=batch)
        return _graph_size(loss)

    assert size(1, 2) == size(2, 2) == size(5, 2)
    assert size(1, 3) > size(1, 2)  # the whole last recursion is in the graph (unlike HRM's one step)


# --------------------------------------------------------------------------------------- halting


@pytest.mark.parametrize(
    ("q_bias", "no_act_continue", "expected"),
    [
        ((1.0, 5.0), True, [1, 1, 1, 1]),  # q_halt > 0 halts, whatever q_continue says
        ((1.0, 5.0), False, [4, 4, 4, 4]),  # HRM's rule: q_halt < q_continue runs on
        ((-1.0, -5.0), True, [4, 4, 4, 4]),  # q_halt < 0 never halts early
        ((-1.0, -5.0), False, [1, 1, 1, 1]),  # HRM's rule: q_halt > q_continue halts
    ],
)
def test_halting_rule_with_and_without_no_act_continue(q_bias, no_act_continue, expected):
    head = trm(no_ACT_continue=no_act_continue, H_cycles=1, L_cycles=1)
    head.train()
    set_q_bias(head, *q_bias)
    assert _run_until_all_halted(head, make_batch()).tolist() == expected


def test_no_act_continue_runs_no_second_forward_and_no_q_continue_loss():
    head = trm(no_ACT_continue=True, H_cycles=2, L_cycles=2)
    head.train()
    calls = _level_calls(head)
    batch = make_batch()
    _, _, metrics, outputs, _ = head(
        carry=head.initial_carry(batch), batch=batch, return_keys=["target_q_continue"]
    )
    assert len(calls) == 2 * 3 and "target_q_continue" not in outputs and "q_continue_loss" not in metrics


def test_without_no_act_continue_the_target_q_is_the_next_state_value():
    head = trm(no_ACT_continue=False, H_cycles=2, L_cycles=2, halt_max_steps=2)
    head.train()
    with torch.no_grad():
        # q depends on the state, too little for a row to halt before halt_max_steps (seeded: torch's global
        # generator starts from a random seed in each process)
        head.model.inner.q_head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    set_q_bias(head, -3.0, 3.0)
    calls = _level_calls(head)
    batch = make_batch()
    carry = head.initial_carry(batch)
    for segment in (1, 2):
        calls.clear()
        carry, _, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["target_q_continue"])
        assert (
            carry.halted.tolist() == [segment == 2] * 4
        )  # no row restarts: its target is the next segment's
        assert len(calls) == 2 * 2 * 3 and "q_continue_loss" in metrics  # the second forward ran
        with torch.no_grad():
            _, _, _, next_halt, next_continue = head.model.inner(
                carry.z_H, carry.z_L, carry.current_data["inputs"], carry.current_data["puzzle_identifiers"]
            )
        value = next_halt if segment == 2 else torch.maximum(next_halt, next_continue)
        torch.testing.assert_close(outputs["target_q_continue"], torch.sigmoid(value))


@torch.no_grad()
def test_eval_runs_halt_max_steps_whatever_the_q_head_says():
    head = trm(H_cycles=1, L_cycles=1)
    head.eval()
    set_q_bias(head, 10.0, -10.0)
    batch = make_batch()
    carry = head.initial_carry(batch)
    for segment in range(1, 5):
        carry, _, _, _, all_halted = head(carry=carry, batch=batch)
        assert carry.steps.tolist() == [segment] * 4 and bool(all_halted) == (segment == 4)
    assert head.model.eval_segments == 4


def test_prefix_longer_than_needed_is_zero_padded_and_dropped_from_the_logits():
    head = trm(puzzle_emb_len=3)
    head.eval()
    batch = make_batch()
    x = head.model.inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    hidden = head.config.hidden_size
    assert x.shape == (4, SEQ + 3, hidden) and torch.count_nonzero(x[:, 1:3]) == 0
    carry, _, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert outputs["logits"].shape == (4, SEQ, VOCAB) and carry.z_H.shape == (4, SEQ + 3, hidden)


# --------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"name": "TRM"}, "arch.name"),
        ({"name": "trm_v1"}, "arch.name"),
        ({"L_layers": 0}, "arch.L_layers"),
        (
            {"hidden_size": 32, "puzzle_emb_ndim": 80, "puzzle_emb_len": 2},
            "arch.puzzle_emb_len",
        ),  # 3 x 32 needed
        ({"puzzle_emb_ndim": 0, "puzzle_emb_len": 2}, "arch.puzzle_emb_len"),
        ({"puzzle_emb_len": -1}, "arch.puzzle_emb_len"),
        ({"no_ACT_continue": "yes"}, "arch.no_ACT_continue"),
        ({"mlp_t": 1}, "arch.mlp_t"),
    ],
)
def test_bad_trm_settings_name_the_key(overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        trm(**overrides)


def test_trm_ignores_H_layers_but_hrm_needs_it():
    assert "H_level" not in str(trm(H_layers=0).state_dict().keys())
    with pytest.raises(UserError, match=r"arch\.H_layers"):
        trm(name="hrm_v1", H_layers=0)


def test_mlp_t_refuses_a_sequence_it_was_not_built_for():
    head = trm(mlp_t=True)
    head.eval()
    batch = {k: (v[:, : SEQ - 2] if v.ndim == 2 else v) for k, v in make_batch().items()}
    with pytest.raises(ValueError, match=r"arch\.mlp_t.*seq_len 8; got a sequence of 6"):
        head(carry=head.initial_carry(batch), batch=batch)


def test_evaluation_replays_the_models_own_halting_rule():
    from hrm.evaluation.runner import q_says_halt

    outputs = {
        "q_halt_logits": torch.tensor([1.0, -1.0, 2.0]),
        "q_continue_logits": torch.tensor([5.0, -5.0, 0.0]),
    }
    assert q_says_halt(trm(no_ACT_continue=True), outputs, 2).tolist() == [True, False]
    assert q_says_halt(trm(no_ACT_continue=False), outputs, 3).tolist() == [False, True, True]
    assert q_says_halt(trm(name="transformer", H_layers=1), {"preds": None}, 2).tolist() == [False, False]
