"""Real processes through stages/train.py: 2 gloo ranks against 1 process, SIGTERM mid-run then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import final_weights, metric_files, tiny_params

from tests.conftest import REPO

RUNNER = [sys.executable, str(REPO / "stages" / "train.py"), "--params"]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_params(params: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def logged_steps(params: dict) -> int:
    tsv = Path(params["paths"]["train_log"]) / "plots" / "metrics" / "train" / "lm_loss.tsv"
    try:
        return len(tsv.read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


@pytest.mark.slow  # three cold processes: ~60 s on a loaded 2-core machine
def test_sigterm_checkpoint_then_resume_bit_identical(tiny_run_data, tmp_path):
    reference = tiny_params(tiny_run_data, tmp_path / "ref", epochs=12, eval_interval=4)
    subprocess.run(
        [*RUNNER, str(write_params(reference, tmp_path / "ref.yaml"))],
        env=environment(),
        check=True,
        capture_output=True,
    )
    total = json.loads((Path(reference["paths"]["train_log"]) / "metrics.json").read_text())["step"]

    params = tiny_params(tiny_run_data, tmp_path / "run", epochs=12, eval_interval=4)
    config = write_params(params, tmp_path / "run.yaml")
    proc = subprocess.Popen(
        [*RUNNER, str(config)], env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while logged_steps(params) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    stopped_at = logged_steps(params)
    assert 5 <= stopped_at < total, "the signal must land mid-run"
    assert f"stopped at step {stopped_at}" in err.decode()
    assert not Path(params["paths"]["model"]).exists()

    done = subprocess.run([*RUNNER, str(config)], env=environment(), capture_output=True, check=True)
    assert "resuming from" in done.stdout.decode()
    assert metric_files(params) == metric_files(reference)
    a, b = final_weights(params), final_weights(reference)
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_two_gloo_processes_match_one(tiny_run_data, tmp_path, one_thread):
    """torchrun --nproc-per-node 2 (gloo), each rank in micro-batches of 2, against one process, one batch of 8.

    Halting and exploration on: the per-row draws are made for the global batch once per step and sliced, so
    neither the process count nor the micro-batch changes them.
    """
    import hrm.training.loop as loop

    one = tiny_params(tiny_run_data, tmp_path / "one", global_batch_size=8, epochs=12, eval_interval=4)
    two = tiny_params(
        tiny_run_data, tmp_path / "two", global_batch_size=8, epochs=12, eval_interval=4, micro_batch_size=2
    )
    assert one["arch"]["halt_exploration_prob"] > 0
    loop.train(one)  # in this process, one thread like each of the launched ones
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*torchrun, *RUNNER[1:], str(write_params(two, tmp_path / "two.yaml"))],
        env=environment(),
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "processes: 2" in done.stdout.decode()
    assert "global 8 = 2 processes x 2 accumulation x 2" in done.stdout.decode()
    a, b = final_weights(one), final_weights(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    files_one, files_two = metric_files(one), metric_files(two)
    assert files_one.keys() == files_two.keys()
    for name in files_one:
        if name.endswith(".tsv"):
            rows_one = [r.split("\t") for r in files_one[name].splitlines()[1:]]
            rows_two = [r.split("\t") for r in files_two[name].splitlines()[1:]]
            assert [r[0] for r in rows_one] == [r[0] for r in rows_two], name
            for r1, r2 in zip(rows_one, rows_two, strict=True):
                assert abs(float(r1[1]) - float(r2[1])) <= 1e-5 * max(1.0, abs(float(r1[1]))), (name, r1, r2)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_nodes(params_files: list[Path]) -> list[subprocess.CompletedProcess]:
    """Two torchrun launchers of one process each (--nnodes 2, static rendezvous on localhost), as on two
    machines: node 0 hosts the rendezvous, node 1 joins it."""
    port = free_port()
    procs = []
    for node, params_file in enumerate(params_files):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(node),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            *RUNNER[1:],
            str(params_file),
        ]
        procs.append(
            subprocess.Popen(
                command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.slow  # two launchers + one process: ~1-2 min on a loaded 2-core machine
def test_two_single_process_launchers_match_one_process(tiny_run_data, tmp_path, one_thread):
    """Multi-node in miniature: two launchers (one process each, gloo) sharing a checkpoint folder."""
    import hrm.training.loop as loop

    one = tiny_params(tiny_run_data, tmp_path / "one", global_batch_size=8, epochs=12, eval_interval=4)
    two = tiny_params(tiny_run_data, tmp_path / "two", global_batch_size=8, epochs=12, eval_interval=4)
    loop.train(one)  # in this process, one thread like each of the launched ones
    config = write_params(two, tmp_path / "two.yaml")
    results = launch_two_nodes([config, config])
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in results[0].stdout
    a, b = final_weights(one), final_weights(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_rank_that_cannot_see_the_checkpoint_folder_stops(tiny_run_data, tmp_path):
    """Node 1 is given another checkpoint folder (as a node without the shared file system would have)."""
    params = [tiny_params(tiny_run_data, tmp_path / f"node{n}") for n in (0, 1)]
    files = [write_params(p, tmp_path / f"node{n}.yaml") for n, p in enumerate(params)]
    results = launch_two_nodes(files)
    assert all(result.returncode != 0 for result in results)
    message = "rank(s) [1] cannot see rank 0's checkpoint folder"
    assert any(message in result.stderr for result in results), [r.stderr[-1500:] for r in results]
    # the worker's own message, as a user error (torchrun's launcher adds its ChildFailedError report below)
    assert any(f"error: {message}" in result.stderr for result in results)
    assert not Path(params[0]["paths"]["model"]).exists()


def test_dense_gradients_are_all_reduced_in_flat_buckets(monkeypatch):
    """One collective per bucket (one dtype, at most the cap; a larger tensor alone), each gradient summed in
    place: here a fake all_reduce doubles what it gets, as a sum over two equal ranks would."""
    import torch.distributed as dist

    from hrm.training.step import all_reduce_buckets, gradient_buckets

    grads = [
        torch.arange(6.0).reshape(2, 3),
        torch.ones(4),
        torch.ones(2, dtype=torch.float64),
        torch.ones(20),
    ]
    assert [len(b) for b in gradient_buckets(grads, bucket_bytes=48)] == [
        2,
        1,
        1,
    ]  # 24 + 16 B, then dtype, then 80 B
    collectives = []
    monkeypatch.setattr(
        dist, "all_reduce", lambda tensor: collectives.append(tensor.numel()) or tensor.mul_(2)
    )
    expected = [g * 2 for g in grads]
    all_reduce_buckets(grads, bucket_bytes=48)
    assert collectives == [10, 2, 20]
    assert all(torch.equal(g, e) for g, e in zip(grads, expected, strict=True))
    assert grads[0].shape == (2, 3)


def test_halting_draws_stay_as_drawn_off_cuda():
    """On the CPU the draws reach the forward untouched (the same tensors: CPU runs stay bit-identical); on
    CUDA draws_on copies them once per step from pinned memory (not testable here)."""
    from hrm.training.step import draws_on

    draws = {"explore": torch.rand(4), "explore_min_steps": torch.randint(2, 5, (4,), dtype=torch.int32)}
    same = draws_on(torch.device("cpu"), draws)
    assert all(same[k] is draws[k] for k in draws)
