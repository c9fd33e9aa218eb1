"""Step time and memory of HRM ACT v1 on CPU fp32: the paper shape, a quick shape, and cycles 2/2 vs 4/4.

Each case runs in a fresh subprocess so that its peak RSS is its own. A "step" is what the trainer does:
one ACT segment through the loss head in training mode (main forward + the no-grad target-Q forward),
backward, AdamATan2 + SparseSignSGD steps. Figures:
  fwd_s / bwd_s / opt_s / step_s  medians over the timed steps
  saved_MiB   bytes autograd keeps for backward (distinct storages), i.e. activation memory
  peak_MiB    peak RSS of the process during the steps minus RSS before the first step
The one-step gradient's promise: saved_MiB and peak_MiB do not grow with H_cycles x L_cycles.
glibc keeps freed blocks below its (self-raising) mmap threshold, so with the default allocator peak RSS
also grows with the amount of no-grad churn. Cases marked "exact RSS" run with MALLOC_MMAP_THRESHOLD_=65536:
every large tensor is mmapped and returned on free, so RSS follows live tensors (steps ~15-20% slower).

    PYTHONPATH=$PWD python bench/bench_model.py            # quick + paper shape (~10 minutes on 2 cores)
    PYTHONPATH=$PWD python bench/bench_model.py --quick-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _common import arch_section

PAPER_ARCH = arch_section(forward_dtype="float32")
# The quick CPU profile the reference measured the official code at: 12x12 routing, hidden 128, 2+2 layers.
QUICK_ARCH = {
    **PAPER_ARCH,
    "H_layers": 2,
    "L_layers": 2,
    "hidden_size": 128,
    "num_heads": 4,
    "puzzle_emb_ndim": 128,
}


THREADS = 0  # torch threads in the workers; 0 = torch's default (set by --threads)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(case: dict) -> dict:
    """Build the model and time `warmup + steps` training steps; runs inside the worker subprocess."""
    import torch

    from hrm.models import build_model
    from hrm.optim import AdamATan2, SparseSignSGD

    torch.manual_seed(0)
    arch = {**case["arch"], "H_cycles": case["cycles"][0], "L_cycles": case["cycles"][1]}
    batch_size, seq_len = case["batch"], case["seq_len"]
    head = build_model(
        arch, seq_len=seq_len, vocab_size=24, num_puzzle_identifiers=5, batch_size=batch_size, seed=0
    )
    head.train()
    optimizer = AdamATan2(head.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sparse = SparseSignSGD(head.puzzle_emb, lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    data = torch.Generator().manual_seed(1)
    batch = {
        "inputs": torch.randint(1, 23, (batch_size, seq_len), generator=data, dtype=torch.int32),
        "labels": torch.randint(1, 24, (batch_size, seq_len), generator=data),
        "puzzle_identifiers": torch.randint(1, 5, (batch_size,), generator=data, dtype=torch.int32),
    }
    carry = head.initial_carry(batch)

    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    rss_before = _rss_bytes()
    times: dict[str, list[float]] = {"fwd_s": [], "bwd_s": [], "opt_s": [], "step_s": []}
    saved_bytes = []
    for index in range(case["warmup"] + case["steps"]):
        saved.clear()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            draws = head.draw_row_randomness(batch_size, generator)
            carry, loss, _, _, _ = head(carry=carry, batch=batch, draws=draws)
        forward_end = time.perf_counter()
        (loss / batch_size).backward()
        backward_end = time.perf_counter()
        optimizer.step()
        sparse.step()
        optimizer.zero_grad()
        sparse.zero_grad()
        end = time.perf_counter()
        if index >= case["warmup"]:
            times["fwd_s"].append(forward_end - start)
            times["bwd_s"].append(backward_end - forward_end)
            times["opt_s"].append(end - backward_end)
            times["step_s"].append(end - start)
            saved_bytes.append(sum(saved.values()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {k: statistics.median(v) for k, v in times.items()}
    result["saved_MiB"] = max(saved_bytes) / 2**20
    result["peak_MiB"] = (peak - rss_before) / 2**20
    result["params_M"] = sum(p.numel() for p in head.parameters()) / 1e6
    result["threads"] = torch.get_num_threads()
    return result


def measure(
    name: str,
    arch: dict,
    seq_len: int,
    batch: int,
    cycles: tuple[int, int],
    steps: int,
    warmup: int,
    exact_rss: bool = False,
) -> dict:
    case = dict(
        arch=arch,
        seq_len=seq_len,
        batch=batch,
        cycles=list(cycles),
        steps=steps,
        warmup=warmup,
        threads=THREADS,
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if exact_rss else None
    if exact_rss:
        name += ", exact RSS"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(case)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name}: worker failed\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(name=name, seq=seq_len, batch=batch, cycles=f"{cycles[0]}/{cycles[1]}")
    print(
        f"{name:<46} seq {seq_len:>4} batch {batch:>3} cycles {result['cycles']}  "
        f"step {result['step_s']:7.2f} s (fwd {result['fwd_s']:6.2f}, bwd {result['bwd_s']:6.2f}, "
        f"opt {result['opt_s']:5.2f})  saved {result['saved_MiB']:8.1f} MiB  peak {result['peak_MiB']:8.1f} MiB  "
        f"[{result['params_M']:.2f}M params, {result['threads']} threads]",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick-only", action="store_true", help="skip the paper shape (minutes on 2 cores)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per quick case (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.worker:
        case = json.loads(args.worker)
        if case["threads"]:
            import torch

            torch.set_num_threads(case["threads"])
        print(json.dumps(run_case(case)))
        return
    global THREADS
    THREADS = args.threads

    print("HRM ACT v1, CPU fp32, training steps (loss head + target-Q pass, backward, both optimizers)")
    print(
        f"load average before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (a shared machine skews times)"
    )
    quick = measure("quick 12x12, hidden 128, 2+2", QUICK_ARCH, 144, 64, (2, 2), args.steps, 1)
    quick4 = measure("quick 12x12, hidden 128, 2+2", QUICK_ARCH, 144, 64, (4, 4), args.steps, 1)
    print(
        f"  quick cycles 4/4 vs 2/2: step time x{quick4['step_s'] / quick['step_s']:.2f}, "
        f"saved x{quick4['saved_MiB'] / quick['saved_MiB']:.3f}, peak x{quick4['peak_MiB'] / quick['peak_MiB']:.3f}"
    )
    if args.quick_only:
        return
    # Paper shape: one timed step after one warm-up at batch 2 (what the reference timed), and the cycle
    # comparison at batch 1, one step each from a cold start (minutes per step on 2 shared cores).
    measure("paper 40x40, hidden 512, 4+4", PAPER_ARCH, 1600, 2, (2, 2), 1, 1)
    paper = measure("paper 40x40, hidden 512, 4+4, cold", PAPER_ARCH, 1600, 1, (2, 2), 1, 0, exact_rss=True)
    paper4 = measure("paper 40x40, hidden 512, 4+4, cold", PAPER_ARCH, 1600, 1, (4, 4), 1, 0, exact_rss=True)
    print(
        f"  paper batch 1, cycles 4/4 vs 2/2: step time x{paper4['step_s'] / paper['step_s']:.2f}, "
        f"saved x{paper4['saved_MiB'] / paper['saved_MiB']:.3f}, peak x{paper4['peak_MiB'] / paper['peak_MiB']:.3f}"
    )
    print("  reference: the official code (SDPA in place of FlashAttention) took 20.3 s/step at batch 2 here")
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
