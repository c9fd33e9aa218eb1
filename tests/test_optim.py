"""Optimizers against hand computations of the reference updates, and the LR schedule."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from hrm.models.sparse_embedding import PuzzleEmbedding
from hrm.optim import ZERO_LR, AdamATan2, LrSchedule, SparseSignSGD

LR, BETA1, BETA2, WD = 0.1, 0.9, 0.95, 0.5
GRADS = [[0.3, -2.0, 1e-3], [-0.1, -1.0, 5e-3]]
START = [1.0, -0.5, 0.25]


def reference_adam_atan2(steps: int) -> list[float]:
    """HRM's AdamATan2 update, written out in plain floats."""
    params, m, v = list(START), [0.0] * 3, [0.0] * 3
    for t in range(1, steps + 1):
        for i in range(3):
            g = GRADS[t - 1][i]
            params[i] *= 1 - LR * WD
            m[i] = BETA1 * m[i] + (1 - BETA1) * g
            v[i] = BETA2 * v[i] + (1 - BETA2) * g * g
            params[i] -= LR / (1 - BETA1**t) * math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(1 - BETA2**t))
    return params


def run_optimizer(make, steps: int) -> list[float]:
    param = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    optimizer = make([param])
    for t in range(steps):
        param.grad = torch.tensor(GRADS[t], dtype=torch.float64)
        optimizer.step()
    return param.detach().tolist()


@pytest.mark.parametrize("steps", [1, 2])
def test_adam_atan2_matches_reference_update(steps):
    ours = run_optimizer(lambda p: AdamATan2(p, lr=LR, betas=(BETA1, BETA2), weight_decay=WD), steps)
    assert ours == pytest.approx(reference_adam_atan2(steps), rel=1e-12, abs=1e-15)


def test_adam_atan2_pytorch_package_is_a_different_update():
    """Why hrm.optim has its own AdamATan2: the PyPI package (even with a=1, decoupled wd) differs."""
    from adam_atan2_pytorch import AdamAtan2 as PackageAdamAtan2

    package = run_optimizer(
        lambda p: PackageAdamAtan2(p, lr=LR, betas=(BETA1, BETA2), weight_decay=WD, a=1.0, b=1.0), 1
    )
    reference = reference_adam_atan2(1)
    # bias correction of m inside atan2: atan2(g, |g|) = pi/4 per unit lr, not 10*atan(0.1) ~ 0.997.
    assert abs(package[0] - reference[0]) > 1e-3
    assert package[0] == pytest.approx(START[0] * (1 - LR * WD) - LR * math.pi / 4, rel=1e-9)


def test_adam_atan2_state_dict_round_trip():
    param = torch.nn.Parameter(torch.tensor(START))
    optimizer = AdamATan2([param], lr=LR, betas=(BETA1, BETA2), weight_decay=WD)
    param.grad = torch.tensor(GRADS[0])
    optimizer.step()
    clone = torch.nn.Parameter(param.detach().clone())
    restored = AdamATan2([clone], lr=LR, betas=(BETA1, BETA2), weight_decay=WD)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as a checkpoint file would
    for p in (param, clone):
        p.grad = torch.tensor(GRADS[1])
    optimizer.step()
    restored.step()
    assert torch.equal(param, clone)


def _embedding_with_grad(ids: list[int], grads: list[list[float]]) -> PuzzleEmbedding:
    embedding = PuzzleEmbedding(num_identifiers=5, dim=2, batch_size=len(ids), cast_to=torch.float32)
    with torch.no_grad():
        embedding.weights.copy_(torch.arange(10, dtype=torch.float32).view(5, 2))
    embedding.train()
    out = embedding(torch.tensor(ids, dtype=torch.int32))
    (out * torch.tensor(grads)).sum().backward()
    return embedding


def test_sparse_sign_sgd_updates_only_used_rows_and_sums_duplicates():
    # id 1 appears twice: grads (+1, -3) and (+2, +1) sum to (+3, -2); id 3 grad (0, -0.5).
    embedding = _embedding_with_grad([1, 3, 1], [[1.0, -3.0], [0.0, -0.5], [2.0, 1.0]])
    before = embedding.weights.clone()
    optimizer = SparseSignSGD(embedding, lr=0.1, weight_decay=0.5)
    optimizer.step()
    after = embedding.weights
    decay = 1 - 0.1 * 0.5
    expected = before.clone()
    expected[1] = before[1] * decay - 0.1 * torch.tensor([1.0, -1.0])
    expected[3] = before[3] * decay - 0.1 * torch.tensor([0.0, -1.0])  # sign(0) = 0: decay only
    torch.testing.assert_close(after, expected)
    assert torch.equal(after[[0, 2, 4]], before[[0, 2, 4]])  # unused rows: not even decayed
    optimizer.zero_grad()
    assert embedding.local_weights.grad is None


def test_sparse_sign_sgd_follows_lr_changes():
    embedding = _embedding_with_grad([2], [[1.0, 1.0]])
    optimizer = SparseSignSGD(embedding, lr=0.1, weight_decay=0.0)
    optimizer.param_groups[0]["lr"] = 0.5
    optimizer.step()
    assert embedding.weights[2].tolist() == [3.5, 4.5]


def _distributed_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ids = [[1, 3], [1, 4]][rank]
        grads = [[[1.0, -3.0], [0.0, 0.0]], [[-2.0, 1.0], [5.0, -5.0]]][rank]
        embedding = _embedding_with_grad(ids, grads)
        SparseSignSGD(embedding, lr=0.1, weight_decay=0.0).step()
        queue.put((rank, embedding.weights.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch: ~15 s on 2 shared cores
def test_sparse_sign_sgd_sums_gradients_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    init_file = str(tmp_path / "rendezvous")
    env = os.environ.copy()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        mp.start_processes(
            _distributed_worker, args=(2, init_file, queue), nprocs=2, join=True, start_method="spawn"
        )
    finally:
        os.environ.clear()
        os.environ.update(env)
    results = dict(queue.get(timeout=10) for _ in range(2))
    # id 1: (1, -3) + (-2, 1) = (-1, -2) -> +0.1 each; id 3: zero grad; id 4: (5, -5).
    expected = torch.arange(10, dtype=torch.float32).view(5, 2)
    expected[1] += 0.1
    expected[4] += torch.tensor([-0.1, 0.1])
    for rank in (0, 1):
        torch.testing.assert_close(torch.tensor(results[rank]), expected)


def test_sparse_sign_sgd_gathers_other_ranks(monkeypatch):
    """Fast stand-in for the 2-process test: a fake 2-rank all_gather delivers the other rank's rows."""
    import torch.distributed as dist

    other_ids = torch.tensor([1, 4], dtype=torch.int32)
    other_grads = torch.tensor([[-2.0, 1.0], [5.0, -5.0]])

    def fake_all_gather(outputs, tensor):
        outputs[0].copy_(tensor)
        outputs[1].copy_(other_ids if tensor.dtype == torch.int32 else other_grads)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather", fake_all_gather)
    embedding = _embedding_with_grad([1, 3], [[1.0, -3.0], [0.0, 0.0]])
    SparseSignSGD(embedding, lr=0.1, weight_decay=0.0).step()
    expected = torch.arange(10, dtype=torch.float32).view(5, 2)
    expected[1] += 0.1  # (1, -3) + (-2, 1) = (-1, -2)
    expected[4] += torch.tensor([-0.1, 0.1])
    torch.testing.assert_close(embedding.weights, expected)


def test_lr_schedule():
    assert LrSchedule(2000, 10000, 1.0).lr(0, 1e-4) == 0.0
    assert LrSchedule(2000, 10000, 1.0).lr(1, 1e-4) == pytest.approx(1e-4 / 2000)
    assert LrSchedule(2000, 10000, 1.0).lr(1000, 1e-4) == pytest.approx(5e-5)
    assert LrSchedule(2000, 10000, 1.0).lr(2000, 1e-4) == pytest.approx(1e-4)
    assert {LrSchedule(2000, 10000, 1.0).lr(s, 1e-4) for s in (2000, 5000, 10000, 20000)} == {1e-4}
    # Cosine to min_ratio: half-way is the mean of the two ends, the end is base * min_ratio.
    assert LrSchedule(2000, 10000, 0.1).lr(6000, 1.0) == pytest.approx(0.55)
    assert LrSchedule(2000, 10000, 0.1).lr(10000, 1.0) == pytest.approx(0.1)
    assert LrSchedule(0, 10000, 0.0).lr(3000, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    # The probes' schedule: past its end from the first step, lr 0 whatever the base.
    assert {ZERO_LR.lr(s, 1e-2) for s in (1, 2, 10**6)} == {0.0}
