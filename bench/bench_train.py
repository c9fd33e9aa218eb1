"""Full trainer step on CPU fp32: time and peak memory, at the paper shape (small batch) and a quick shape.

What is timed is `hrm.training.step.train_step` exactly as the run loop calls it, fed by the real sampler:
draw + collate the batch, one ACT segment through the loss head (main forward + the no-grad target-Q
forward), loss / global_batch backward, finiteness checks, AdamATan2 + SparseSignSGD with the scheduled lr,
zero grad, metric packing. Each case runs in a fresh subprocess so its peak RSS is its own.
  step_s     median wall time of the timed steps (the first step is warm-up and not timed)
  peak_MiB   peak RSS during the steps minus RSS before the first step (activations, grads, optimizer state)
  rss_MiB    peak RSS of the whole process (model, data, torch itself)

Memory cases (`--memory`): the paper shape at batch 2 as one batch (`paper`), as 2 micro-batches of 1
(`paper-micro`, train.micro_batch_size 1) and with activation checkpointing (`paper-ckpt`); per-example step
memory and the step time of checkpointing as ratios to `paper`.

    PYTHONPATH=$PWD python bench/bench_train.py               # quick + paper shape (minutes on 2 cores)
    PYTHONPATH=$PWD python bench/bench_train.py --only quick --threads 1
    PYTHONPATH=$PWD python bench/bench_train.py --memory --threads 2
    PYTHONPATH=$PWD python bench/bench_train.py --traced    # seconds: autograd-saved bytes on the meta device

`--traced` counts what autograd holds for backward (each storage once, attention as the fused kernel) in one
trainer forward/backward at the paper shape on PyTorch's meta device (no compute, independent of machine load),
at 1 and 2 rows: bytes per example with and without activation checkpointing. With checkpointing, backward
recomputes one block at a time, whose activations come on top while it runs (not counted here).
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
    "paper-micro": {"arch": PAPER_ARCH, "side": 40, "batch": 2, "steps": 3, "micro": 1},
    "paper-ckpt": {"arch": PAPER_ARCH, "side": 40, "batch": 2, "steps": 3, "checkpointing": True},
}
MEMORY_CASES = ("paper", "paper-micro", "paper-ckpt")
TRAIN = train_section(epochs=1, eval_interval=1, device="cpu", threads=0)  # --threads sets torch threads


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_routing_like_dataset(root: Path, side: int, groups: int) -> None:
    """Our layout's shape: groups of 4 one-example puzzles (vehicles 1..4), 24 tokens, no label 0."""
    import numpy as np

    inputs = np.random.default_rng(0).integers(1, 23, size=(groups * 4, side * side), dtype=np.uint8)
    write_layout(root / "train", inputs, inputs.copy(), vocab_size=24)


def run_case(name: str, threads: int, steps: int = 0) -> dict:
    import torch

    from hrm.models import build_model
    from hrm.optim import LrSchedule
    from hrm.training.data import PuzzleDataset, TrainSampler
    from hrm.training.setup import TrainConfig
    from hrm.training.state import TrainState, build_optimizers, set_activation_checkpointing
    from hrm.training.step import train_step

    if threads:
        torch.set_num_threads(threads)
    case = dict(CASES[name], **({"steps": steps} if steps else {}))
    batch = case["batch"]
    config = TrainConfig.from_params({**TRAIN, "global_batch_size": batch})
    with tempfile.TemporaryDirectory() as tmp:
        write_routing_like_dataset(Path(tmp), case["side"], groups=batch * (case["steps"] + 2))
        dataset = PuzzleDataset(tmp, "train")
        sampler = TrainSampler(dataset, batch, epochs_per_iteration=4, seed=0)
        micro = case.get("micro", batch)
        module = build_model(case["arch"], dataset.metadata, micro, torch.device("cpu"), seed=0)
        set_activation_checkpointing(module, case.get("checkpointing", False))
        module.train()
        optimizers, base_lrs = build_optimizers(module, config)
        generator = torch.Generator().manual_seed(0)
        state = TrainState(
            head=module, module=module, optimizers=optimizers, base_lrs=base_lrs, generator=generator
        )
        schedule = LrSchedule(config.lr_warmup_steps, 10_000, config.lr_min_ratio)
        params = sum(p.numel() for p in module.parameters()) + module.puzzle_emb.weights.numel()
        rss_before = _rss_bytes()
        times = []
        for index in range(case["steps"] + 1):
            started = time.perf_counter()
            train_step(
                state,
                sampler.next_batch(),
                global_batch_size=batch,
                schedule=schedule,
                micro_batch_size=micro,
            )
            if index:  # the first step allocates optimizer state and warms caches
                times.append(time.perf_counter() - started)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "case": name,
        "seq_len": case["side"] ** 2,
        "batch": batch,
        "micro": micro,
        "params_M": params / 1e6,
        "threads": torch.get_num_threads(),
        "step_s": statistics.median(times),
        "step_min_s": min(times),
        "peak_MiB": (peak - rss_before) / 2**20,
        "rss_MiB": peak / 2**20,
    }


def traced_bytes_per_example(checkpointing: bool) -> float:
    """Autograd-saved bytes per example of the trainer's forward/backward at the paper shape (meta device),
    attention counted as the fused kernel CPU and GPU pick (hrm.trace.saved_step_bytes)."""
    from hrm.training.data import DatasetMetadata
    from hrm.training.trace import Workload, saved_step_bytes

    sizes = dict(
        vocab_size=24, seq_len=1600, num_puzzle_identifiers=5, total_groups=1, mean_puzzle_examples=1.0
    )
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, sets=["all"], **sizes)
    work = Workload(PAPER_ARCH, meta)
    sizes = [saved_step_bytes(work, "meta", "float32", rows, 0, True, checkpointing)[0] for rows in (1, 2)]
    return float(sizes[1] - sizes[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=sorted(CASES), help="run one case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--memory", action="store_true", help="the paper-shape memory cases and ratios")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per case (0 = the case's own)")
    parser.add_argument(
        "--traced", action="store_true", help="autograd-saved bytes per example (meta device)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.traced:
        plain, recomputed = traced_bytes_per_example(False), traced_bytes_per_example(True)
        print(
            f"paper shape, fp32, autograd-saved bytes per example: plain {plain / 2**20:.1f} MiB, "
            f"activation checkpointing {recomputed / 2**20:.1f} MiB (x{recomputed / plain:.3f}); "
            f"micro-batches of m rows hold m x these"
        )
        return
    if args.worker:
        print(json.dumps(run_case(args.worker, args.threads, args.steps)))
        return
    print(f"CPU fp32, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    results = {}
    names = [args.only] if args.only else list(MEMORY_CASES) if args.memory else ["quick", "paper"]
    for name in names:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--threads",
                str(args.threads),
                "--steps",
                str(args.steps),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}")
            continue
        r = results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['case']:<6} seq {r['seq_len']:>5} batch {r['batch']:>3} params {r['params_M']:6.2f}M "
            f"threads {r['threads']}: step {r['step_s']:7.3f} s (min {r['step_min_s']:.3f}), "
            f"{r['batch'] / r['step_s']:7.2f} examples/s, step memory {r['peak_MiB']:7.1f} MiB, "
            f"process peak RSS {r['rss_MiB']:7.1f} MiB (micro-batch {r['micro']})"
        )
    if "paper" in results:
        plain = results["paper"]
        for name in ("paper-micro", "paper-ckpt"):
            if name in results:
                r = results[name]
                print(
                    f"{name} / paper: step memory (batch 2) x{r['peak_MiB'] / plain['peak_MiB']:.3f}, "
                    f"step time x{r['step_s'] / plain['step_s']:.3f}"
                )


if __name__ == "__main__":
    main()
