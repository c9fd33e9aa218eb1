"""Micro-batching is the computation of one big batch; activation checkpointing does not change gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import repo_params, tiny_arch
from train_helpers import final_weights, metric_files, tiny_params

from hrm.config import ConfigError
from hrm.training import loop
from hrm.training.state import set_activation_checkpointing

TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def batch8_params(tiny_run_data: Path, out: Path, **train) -> dict:
    """Global batch 8, >= 20 steps, halting and exploration on (train_helpers.TINY_ARCH: 3 segments, exploration
    0.5)."""
    params = tiny_params(tiny_run_data, out, global_batch_size=8, epochs=12, eval_interval=4, **train)
    assert params["arch"]["halt_max_steps"] > 1 and params["arch"]["halt_exploration_prob"] > 0
    return params


@pytest.fixture(scope="module")
def one_batch(tiny_run_data, tmp_path_factory):
    params = batch8_params(tiny_run_data, tmp_path_factory.mktemp("one_batch"))
    summary = loop.train(params)
    assert summary["step"] >= 20
    return params


def final_carry(params: dict) -> dict[str, torch.Tensor]:
    (folder,) = sorted(Path(params["paths"]["checkpoints"]).glob("*/step_*"))[-1:]
    return torch.load(folder / "rank0.pt", weights_only=True)["carry"]


def train_rows(params: dict) -> dict[str, list[list[str]]]:
    return {
        name: [row.split("\t") for row in text.splitlines()[1:]]
        for name, text in metric_files(params).items()
        if name.startswith("plots/metrics/train/")
    }


def assert_close_runs(a: dict, b: dict, carry: bool = True) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=TOLERANCE, msg=key)
    rows_a, rows_b = train_rows(a), train_rows(b)
    assert rows_a.keys() == rows_b.keys() and rows_a
    for name in rows_a:
        assert [r[0] for r in rows_a[name]] == [r[0] for r in rows_b[name]], name
        for ra, rb in zip(rows_a[name], rows_b[name], strict=True):
            assert abs(float(ra[1]) - float(rb[1])) <= TOLERANCE * max(1.0, abs(float(ra[1]))), (name, ra, rb)
    if carry:
        ca, cb = final_carry(a), final_carry(b)
        assert ca.keys() == cb.keys()
        for key in ca:
            if ca[key].is_floating_point():
                # z_H/z_L are O(1) after RMSNorm and pass through every layer 2 x H_cycles x L_cycles times a
                # segment, so fp32 kernel differences at another batch shape reach ~1e-5 absolute: compare
                # relative to the tensor's scale.
                scale = float(ca[key].abs().max())
                assert float((ca[key] - cb[key]).abs().max()) <= TOLERANCE * max(1.0, scale), key
            else:  # halted flags, step counts, the examples each row works on: equal
                assert torch.equal(ca[key], cb[key]), key


def test_micro_batches_of_2_equal_one_batch_of_8(one_batch, tiny_run_data, tmp_path, capsys):
    params = batch8_params(tiny_run_data, tmp_path, micro_batch_size=2)
    loop.train(params)
    assert "memory plan: global 8 = 1 process x 4 accumulation x 2" in capsys.readouterr().out
    assert_close_runs(one_batch, params)


def test_checkpoint_at_8_resume_at_2_matches_uninterrupted(one_batch, tiny_run_data, tmp_path):
    params = batch8_params(tiny_run_data, tmp_path, micro_batch_size=8, max_steps=9)
    assert loop.train(params)["step"] == 9
    params["train"].update(micro_batch_size=2, max_steps=0)  # neither is in the resume fingerprint
    loop.train(params)
    assert_close_runs(one_batch, params)


def test_micro_batch_that_does_not_divide_is_refused_before_any_work(tmp_path):
    params = batch8_params(tmp_path / "no-data-here", tmp_path, micro_batch_size=3)
    with pytest.raises(ConfigError, match=r"micro_batch_size 3 does not divide the 8 rows per process"):
        loop.train(params)  # the missing data folder is never read


@pytest.mark.parametrize("bad", [0, -2, "big", True, 2.5])
def test_micro_batch_must_be_auto_or_positive_integer(bad):
    from hrm.config import check_params

    params = repo_params()
    params["train"]["micro_batch_size"] = bad
    with pytest.raises(
        ConfigError, match='train.micro_batch_size must be "auto" or an integer in \\[1, 1048576\\]'
    ):
        check_params(params)  # what load_params applies at the start of every stage


def tiny_gradients(checkpointing: bool, name: str = "hrm_v1") -> dict[str, torch.Tensor]:
    from hrm.models import build_model
    from hrm.training.step import forward_backward

    head = build_model(
        # two blocks per stack, recomputed after the no-grad cycles of a segment
        tiny_arch(name, H_layers=2, L_layers=2, H_cycles=2, L_cycles=2),
        seq_len=8,
        vocab_size=6,
        num_puzzle_identifiers=4,
        batch_size=3,
        seed=5,
    )
    set_activation_checkpointing(head, checkpointing)
    head.train()
    generator = torch.Generator().manual_seed(1)
    batch = {
        "inputs": torch.randint(1, 6, (3, 8), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, 6, (3, 8), generator=generator),
        "puzzle_identifiers": torch.tensor([1, 2, 1], dtype=torch.int32),
    }
    carry = head.initial_carry(batch)
    for _ in range(2):  # the second segment starts from a carried (not reset) state
        draws = head.draw_row_randomness(3, generator)
        carry, _, _ = forward_backward(head, carry, batch, draws, global_batch_size=3)
    grads = {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
    grads["puzzle_emb.local"] = head.puzzle_emb.local_weights.grad.clone()
    return grads


@pytest.mark.parametrize("name", ["hrm_v1", "trm"])
def test_activation_checkpointing_gives_bit_identical_gradients(name):
    plain, recomputed = tiny_gradients(False, name), tiny_gradients(True, name)
    assert plain.keys() == recomputed.keys() and len(plain) > 10
    for name in plain:
        assert torch.equal(plain[name], recomputed[name]), name


def test_activation_checkpointing_really_recomputes(monkeypatch):
    """The switch reaches the blocks: with it on, each one-step-gradient block runs twice (forward, backward)."""
    from hrm.models.layers import PostNormBlock

    calls = {"n": 0}
    real = PostNormBlock.forward

    def counting(self, *args, **kwargs):
        if torch.is_grad_enabled():
            calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PostNormBlock, "forward", counting)
    tiny_gradients(False)
    plain = calls["n"]
    calls["n"] = 0
    tiny_gradients(True)
    assert calls["n"] > plain > 0


def test_plan_picks_the_largest_dividing_micro_batch_that_fits():
    from hrm.training.memory import MEMORY_HEADROOM, StepMemory, plan

    gib = 2**30
    memory = StepMemory(fixed=2 * gib, per_example=gib // 2, carry_per_row=gib // 100, method="test")
    free = int(80 * gib / MEMORY_HEADROOM)  # 80 GiB usable
    chosen = plan(768, 1, None, memory, free, free)
    assert chosen.micro_batch == 128 and chosen.accumulation == 6  # 256 rows would need ~138 GiB
    assert chosen.peak_bytes <= 80 * gib
    assert chosen.describe().startswith(
        "global 768 = 1 process x 6 accumulation x 128, est. peak 72 GiB of 80 GiB usable (90% of 89 GiB"
    )


def test_fixed_micro_batch_that_cannot_fit_is_refused_with_the_largest_that_fits():
    from hrm.io import UserError
    from hrm.training.memory import MEMORY_HEADROOM, StepMemory, oom_message, plan

    gib = 2**30
    memory = StepMemory(fixed=2 * gib, per_example=gib // 2, carry_per_row=gib // 100, method="test")
    free = int(80 * gib / MEMORY_HEADROOM)
    with pytest.raises(UserError, match="micro_batch_size 256 does not fit.*the largest that fits is 128"):
        plan(768, 1, 256, memory, free, free)
    with pytest.raises(UserError, match="not even a micro-batch of 1 fits"):
        plan(768, 1, None, memory, int(gib / MEMORY_HEADROOM), gib)
    assert "try train.micro_batch_size=64" in oom_message(128, "checkpoints/x/step_000000010")
    assert "checkpoints/x/step_000000010" in oom_message(128, "checkpoints/x/step_000000010")


def test_out_of_memory_mid_run_names_a_micro_batch_and_keeps_the_checkpoint(
    tiny_run_data, tmp_path, monkeypatch
):
    import hrm.training.step as step_module
    from hrm.io import UserError

    real_step = step_module.train_step

    def running_out(state, batch, **kwargs):
        if state.step == 12:  # after the first eval's checkpoint (step 10)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(state, batch, **kwargs)

    params = batch8_params(tiny_run_data, tmp_path, micro_batch_size=4)
    monkeypatch.setattr(step_module, "train_step", running_out)
    with pytest.raises(
        UserError, match=r"micro-batch 4; try train.micro_batch_size=2.*Last good checkpoint: .*step_0"
    ):
        loop.train(params)
    (folder,) = Path(params["paths"]["checkpoints"]).glob("*/step_*")
    assert (folder / "common.pt").exists() and (folder / "rank0.pt").exists()
