"""Full trainer step on CPU fp32: time and peak memory, at the paper shape (small batch) and a quick shape.

What is timed is `hrm.training.step.train_step` exactly as the run loop calls it, fed by the real sampler:
draw + collate the batch, one ACT segment through the loss head (main forward + the no-grad target-Q
forward), loss / global_batch backward, finiteness checks, AdamATan2 + SparseSignSGD with the scheduled lr,
zero grad, metric packing. Each case runs in a fresh subprocess so its peak RSS is its own.
  step_s     median wall time of the timed steps (the first step is warm-up and not timed)
  peak_MiB   peak RSS during the steps minus RSS before the first step (activations, grads, optimizer state)
  rss_MiB    peak RSS of the whole process (model, data, torch itself)

    PYTHONPATH=$PWD python bench/bench_train.py               # quick + paper shape (minutes on 2 cores)
    PYTHONPATH=$PWD python bench/bench_train.py --only quick --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import arch_section, train_section, write_layout

PAPER_ARCH = arch_section(forward_dtype="float32")
QUICK_ARCH = {
    **PAPER_ARCH,
    "H_layers": 2,
    "L_layers": 2,
    "hidden_size": 128,
    "num_heads": 4,
    "puzzle_emb_ndim": 128,
}
CASES = {
    "paper": {"arch": PAPER_ARCH, "side": 40, "batch": 2, "steps": 3},
    "quick": {"arch": QUICK_ARCH, "side": 12, "batch": 64, "steps": 5},
}
TRAIN = train_section(epochs=1, eval_interval=1, device="cpu", threads=0)  # --threads sets torch threads


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_routing_like_dataset(root: Path, side: int, groups: int) -> None:
    """Our layout's shape: groups of 4 one-example puzzles (vehicles 1..4), 24 tokens, no label 0."""
    import numpy as np

    inputs = np.random.default_rng(0).integers(1, 23, size=(groups * 4, side * side), dtype=np.uint8)
    write_layout(root / "train", inputs, inputs.copy(), vocab_size=24)


def run_case(name: str, threads: int) -> dict:
    import torch

    from hrm.training.data import PuzzleDataset, TrainSampler
    from hrm.training.loop import TrainConfig, build_model, build_optimizers, make_lr_for
    from hrm.training.step import TrainState, train_step

    if threads:
        torch.set_num_threads(threads)
    case = CASES[name]
    batch = case["batch"]
    config = TrainConfig.from_params({**TRAIN, "global_batch_size": batch})
    with tempfile.TemporaryDirectory() as tmp:
        write_routing_like_dataset(Path(tmp), case["side"], groups=batch * (case["steps"] + 2))
        dataset = PuzzleDataset(tmp, "train")
        sampler = TrainSampler(dataset, batch, epochs_per_iteration=4, seed=0)
        module = build_model(case["arch"], dataset.metadata, batch, torch.device("cpu"), seed=0)
        module.train()
        optimizers, base_lrs = build_optimizers(module, config)
        generator = torch.Generator().manual_seed(0)
        state = TrainState(
            head=module, module=module, optimizers=optimizers, base_lrs=base_lrs, generator=generator
        )
        lr_for = make_lr_for(config, total_steps=10_000)
        params = sum(p.numel() for p in module.parameters()) + module.puzzle_emb.weights.numel()
        rss_before = _rss_bytes()
        times = []
        for index in range(case["steps"] + 1):
            started = time.perf_counter()
            train_step(state, sampler.next_batch(), global_batch_size=batch, lr_for=lr_for)
            if index:  # the first step allocates optimizer state and warms caches
                times.append(time.perf_counter() - started)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "case": name,
        "seq_len": case["side"] ** 2,
        "batch": batch,
        "params_M": params / 1e6,
        "threads": torch.get_num_threads(),
        "step_s": statistics.median(times),
        "step_min_s": min(times),
        "peak_MiB": (peak - rss_before) / 2**20,
        "rss_MiB": peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=sorted(CASES), help="run one case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(args.worker, args.threads)))
        return
    print(f"CPU fp32, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for name in [args.only] if args.only else ["quick", "paper"]:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['case']:<6} seq {r['seq_len']:>5} batch {r['batch']:>3} params {r['params_M']:6.2f}M "
            f"threads {r['threads']}: step {r['step_s']:7.3f} s (min {r['step_min_s']:.3f}), "
            f"{r['batch'] / r['step_s']:7.2f} examples/s, step memory {r['peak_MiB']:7.1f} MiB, "
            f"process peak RSS {r['rss_MiB']:7.1f} MiB"
        )


if __name__ == "__main__":
    main()
