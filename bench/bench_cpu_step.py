"""CPU fp32 training-step time of HRM at a few shapes, this tree against a git revision, in one run.

`--compare REV` extracts `hrm/` at REV (`git archive`) into a temp folder; each case then runs once with the
old code and once with this tree, alternating, each in its own subprocess with 1 torch thread (the machine is
shared: figures are medians of the timed steps, the first step is warm-up). The step is
`hrm.training.step.train_step` as the trainer calls it (forward + target-Q forward, backward, AdamATan2 +
SparseSignSGD). Both sides see the same weights, batches and generator, so the per-step losses printed as a
checksum must agree (bit-identical when the math is the same; otherwise to fp32 rounding).

    PYTHONPATH=$PWD python bench/bench_cpu_step.py --compare main          # old vs new, ratios
    PYTHONPATH=$PWD python bench/bench_cpu_step.py --only quick --steps 20  # this tree only
    PYTHONPATH=$PWD python bench/bench_cpu_step.py --only medium-hrm_v1 --only medium-trm --only medium-transformer
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _common import PARAMS, arch_section, train_section, write_layout

BASE_ARCH = arch_section(forward_dtype="float32")
CASES = {
    # The project's quick profile: 8x8 map (seq 64 + 1 prefix), hidden 64, 1+1 layers, cycles 1/1.
    "quick": {
        "arch": {
            **BASE_ARCH,
            "H_cycles": 1,
            "L_cycles": 1,
            "H_layers": 1,
            "L_layers": 1,
            "hidden_size": 64,
            "num_heads": 2,
            "puzzle_emb_ndim": 64,
        },
        "side": 8,
        "batch": 8,
        "steps": 30,
    },
    # 12x12 routing, hidden 128, 2+2 layers, cycles 2/2 (the reference's official-code CPU profile), batch 16.
    "small": {
        "arch": {
            **BASE_ARCH,
            "H_layers": 2,
            "L_layers": 2,
            "hidden_size": 128,
            "num_heads": 4,
            "puzzle_emb_ndim": 128,
        },
        "side": 12,
        "batch": 16,
        "steps": 10,
    },
    # The paper's model (hidden 512, 4+4 layers, 2/2 cycles) on a short 12x12 sequence, batch 2.
    "paper12": {"arch": BASE_ARCH, "side": 12, "batch": 2, "steps": 6},
    # The paper's sequence (40x40 + 1) and width with 1+1 layers, cycles 1/1, batch 1: attention-heavy.
    "long40": {
        "arch": {**BASE_ARCH, "H_cycles": 1, "L_cycles": 1, "H_layers": 1, "L_layers": 1},
        "side": 40,
        "batch": 1,
        "steps": 4,
    },
}


def profile_case(profile: str, arch_name: str, steps: int) -> dict:
    """A case at a params.yaml profile's shape for `arch_name` (its `per_arch` part included): the step that
    profile's runs take (`hrm compare --profile NAME`), on synthetic tokens."""
    from hrm.config import load_params, run_params

    overrides = [f"arch.name={arch_name}", "arch.forward_dtype=float32"]
    params = run_params(load_params(PARAMS), profile, overrides, PARAMS)
    side = params["generate"]["rows"]
    assert side == params["generate"]["cols"], "profile cases assume square maps"
    return {
        "arch": params["arch"],
        "side": side,
        "batch": params["train"]["global_batch_size"],
        "steps": steps,
    }


# The medium profile's three runs (README "The medium profile"); this tree only (`--compare` needs the old code
# to know the arch).
CASES.update(
    {f"medium-{arch}": profile_case("medium", arch, steps=10) for arch in ("hrm_v1", "trm", "transformer")}
)
TRAIN = train_section(epochs=1, eval_interval=1, device="cpu", threads=1)


def write_dataset(root: Path, side: int, groups: int) -> None:
    """Routing-like layout: groups of 4 one-example puzzles, 24 tokens, labels half equal to the inputs."""
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = rng.integers(1, 23, size=(groups * 4, side * side), dtype=np.uint8)
    labels = np.where(rng.random(inputs.shape) < 0.5, inputs, rng.integers(1, 23, size=inputs.shape))
    write_layout(root / "train", inputs, labels, vocab_size=24)


def run_case(name: str, steps: int, profile: bool) -> dict:
    import torch

    from hrm.models import build_model
    from hrm.optim import LrSchedule
    from hrm.training.data import PuzzleDataset, TrainSampler
    from hrm.training.setup import TrainConfig
    from hrm.training.state import TrainState, build_optimizers
    from hrm.training.step import train_step

    torch.set_num_threads(1)
    case = CASES[name]
    batch = case["batch"]
    config = TrainConfig.from_params({**TRAIN, "global_batch_size": batch})
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), case["side"], groups=batch * (steps + 2))
        dataset = PuzzleDataset(tmp, "train")
        sampler = TrainSampler(dataset, batch, epochs_per_iteration=4, seed=0)
        module = build_model(case["arch"], dataset.metadata, batch, torch.device("cpu"), seed=0)
        module.train()
        optimizers, base_lrs = build_optimizers(module, config)
        state = TrainState(
            head=module,
            module=module,
            optimizers=optimizers,
            base_lrs=base_lrs,
            generator=torch.Generator().manual_seed(0),
        )
        schedule = LrSchedule(config.lr_warmup_steps, 10_000, config.lr_min_ratio)
        batches = [sampler.next_batch() for _ in range(steps + 1)]
        times, losses = [], []
        for index, batch_data in enumerate(batches):
            if profile and index == len(batches) - 1:
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as torch_profile

                with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                    result = train_step(state, batch_data, global_batch_size=batch, schedule=schedule)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40), file=sys.stderr)
                losses.append(result.metrics["loss"])
                continue
            started = time.perf_counter()
            result = train_step(state, batch_data, global_batch_size=batch, schedule=schedule)
            if index:
                times.append(time.perf_counter() - started)
            losses.append(result.metrics["loss"])
    return {"case": name, "step_s": statistics.median(times), "min_s": min(times), "losses": losses}


def spawn(name: str, steps: int, code_root: str, profile: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": code_root, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--worker", name, "--steps", str(steps)]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} ({code_root}) failed:\n{done.stderr[-3000:]}")
    if profile:
        print(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def extract_revision(revision: str, into: Path) -> None:
    """`hrm/` as it is at `revision`, unpacked under `into`."""
    repo = Path(__file__).resolve().parent.parent
    archive = into / "old.tar"
    subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", "-o", str(archive), revision, "hrm"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compare", metavar="REV", help="also time hrm/ at this git revision")
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run these cases")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per case (0 = case default)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating old/new rounds per case")
    parser.add_argument("--profile", action="store_true", help="print a torch profile of the last step")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        steps = args.steps or CASES[args.worker]["steps"]
        print(json.dumps(run_case(args.worker, steps, args.profile)))
        return
    here = str(Path(__file__).resolve().parent.parent)
    print(f"CPU fp32, 1 thread, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"new": here}
        if args.compare:
            extract_revision(args.compare, Path(tmp))
            sides = {"old": tmp, "new": here}
        for name in args.only or list(CASES):
            steps = args.steps or CASES[name]["steps"]
            if args.profile:
                for label, root in sides.items():
                    print(f"== profile {name} {label}")
                    spawn(name, steps, root, profile=True)
                continue
            times: dict[str, list[float]] = {label: [] for label in sides}
            losses: dict[str, list[float]] = {}
            for _ in range(args.rounds if args.compare else 1):
                for label, root in sides.items():
                    result = spawn(name, steps, root)
                    times[label].append(result["step_s"])
                    losses[label] = result["losses"]
            line = f"{name:<8}" + "".join(
                f" {label} {statistics.median(values) * 1e3:9.1f} ms/step" for label, values in times.items()
            )
            if args.compare:
                ratio = statistics.median(times["old"]) / statistics.median(times["new"])
                diff = max(abs(a - b) for a, b in zip(losses["old"], losses["new"], strict=True))
                same = "bit-identical" if losses["old"] == losses["new"] else f"max |diff| {diff:.3g}"
                line += f"  speed-up x{ratio:.2f}  losses {same}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
