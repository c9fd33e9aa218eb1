"""GPU acceptance run: one command, one JSON of figures (target: under 8 minutes on an H100/H200).

    PYTHONPATH=$PWD python bench/gpu_check.py [--out gpu_check.json] [--peak-tflops 989]

1. `hrm doctor` on the paper params (every check, measured memory on CUDA).
2. The paper-shape training step (40x40, batch `--batch`, bf16) eager and under torch.compile:
   steps/s, samples/s, MFU = FLOPs per step (hrm.doctor.step_flops, formula in the JSON) / time / peak.
3. The `auto` memory plan (hrm.training.memory, as the trainer makes it) against the measured
   torch.cuda.max_memory_allocated of a step at the planned micro-batch; passes within 15%.
4. Determinism: two 20-step runs of the trainer (`deterministic: true`) give bit-identical weights.
5. The quick profile end to end on the GPU: generate, convert, validate, train, evaluate (stage scripts).

Each part records its own error and the script goes on; exit 1 if any part failed. Without CUDA it stops at
once with "no CUDA" (exit 2) and writes nothing. Nothing here runs in the tests or CI except that check.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Dense bf16 tensor-core peaks (fp32 accumulate), vendor data sheets; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.2}
PLAN_TOLERANCE = 0.15
PAPER_SIDE = 40


def no_cuda_message() -> str | None:
    """None when a CUDA device is usable, else why not."""
    try:
        import torch
    except ImportError:
        return "no CUDA: torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA: torch {torch.__version__} sees no CUDA device; this script needs a GPU"
    return None


def paper_params() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def paper_dataset(root: Path, groups: int) -> Any:
    """Random 40x40 grids in our layout (groups of 4 vehicles); shapes are what the timing needs."""
    import numpy as np
    from _common import write_layout

    from hrm.training.data import PuzzleDataset

    inputs = np.random.default_rng(0).integers(1, 23, size=(groups * 4, PAPER_SIDE**2), dtype=np.uint8)
    write_layout(root / "train", inputs, inputs.copy(), vocab_size=24)
    write_layout(root / "test", inputs[:8], inputs[:8].copy(), vocab_size=24)
    return PuzzleDataset(root, "train")


def make_state(arch: dict[str, Any], dataset: Any, rows: int, train: dict[str, Any], device: Any) -> Any:
    import torch

    from hrm.training.loop import TrainConfig, build_model, build_optimizers, set_activation_checkpointing
    from hrm.training.step import TrainState

    config = TrainConfig.from_params(train)
    module = build_model(arch, dataset.metadata, rows, device, config.seed)
    set_activation_checkpointing(module, config.activation_checkpointing)
    module.train()
    optimizers, base_lrs = build_optimizers(module, config)
    return TrainState(
        head=module,
        module=module,
        optimizers=optimizers,
        base_lrs=base_lrs,
        generator=torch.Generator().manual_seed(config.seed),
    ), config


def part_doctor(report: dict[str, Any]) -> None:
    from hrm import doctor

    config = doctor.load_run_config(REPO / "params.yaml", device="cuda")
    result = doctor.run_doctor(config)
    report["doctor"] = result.to_dict()


def part_step_speed(report: dict[str, Any], batch: int, steps: int, peak_tflops: float | None) -> None:
    import torch

    from hrm.doctor import step_flops
    from hrm.training.memory import first_batch
    from hrm.training.step import train_step

    params = paper_params()
    arch = dict(params["arch"], forward_dtype="bfloat16")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    out: dict[str, Any] = {"gpu": name, "batch": batch, "peak_bf16_tflops": peak}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = paper_dataset(Path(tmp), groups=max(2, batch // 4 + 1))
        rows = first_batch(dataset, batch)
        flops, formula = step_flops(arch, dataset.metadata.seq_len, dataset.metadata.vocab_size, batch)
        out.update(flops_per_step=flops, flops_formula=formula)
        for compiled in (False, True):
            train = dict(params["train"], global_batch_size=batch, compile=compiled)
            state, _ = make_state(arch, dataset, batch, train, device)
            if compiled:
                state.head = torch.compile(state.module, dynamic=False)
            batch_on_device = {k: v.to(device) for k, v in rows.items()}
            started = time.perf_counter()
            for _ in range(2):  # warm-up (and compilation)
                train_step(state, batch_on_device, global_batch_size=batch, lr_for=lambda s, b: 1e-4)
            torch.cuda.synchronize()
            warmup_s = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(steps):
                train_step(state, batch_on_device, global_batch_size=batch, lr_for=lambda s, b: 1e-4)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / steps
            key = "compiled" if compiled else "eager"
            out[key] = {
                "step_s": seconds,
                "steps_per_s": 1 / seconds,
                "samples_per_s": batch / seconds,
                "warmup_s": warmup_s,
                "mfu": flops / seconds / (peak * 1e12) if peak else None,
            }
            del state
            torch.cuda.empty_cache()
    out["mfu_formula"] = "flops_per_step / step_s / (peak_bf16_tflops x 1e12)"
    report["step_speed"] = out


def part_memory_plan(report: dict[str, Any]) -> None:
    import torch

    from hrm.training.loop import TrainConfig
    from hrm.training.memory import first_batch, plan_micro_batch
    from hrm.training.step import train_step

    params = paper_params()
    arch = dict(params["arch"], forward_dtype="bfloat16")
    device = torch.device("cuda")
    config = TrainConfig.from_params(params["train"])
    with tempfile.TemporaryDirectory() as tmp:
        dataset = paper_dataset(Path(tmp), groups=config.global_batch_size // 4 + 1)
        plan = plan_micro_batch(arch, dataset.metadata, config, 1, device, None, dataset)
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        state, _ = make_state(arch, dataset, plan.micro_batch, params["train"], device)
        rows = {k: v.to(device) for k, v in first_batch(dataset, plan.share).items()}
        train_step(
            state,
            rows,
            global_batch_size=config.global_batch_size,
            lr_for=lambda s, b: 1e-4,
            micro_batch_size=plan.micro_batch,
        )
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated(device) - baseline
    estimated = plan.peak_bytes or 0
    error = abs(estimated - measured) / measured
    report["memory_plan"] = {
        "plan": plan.describe(),
        "micro_batch": plan.micro_batch,
        "accumulation": plan.accumulation,
        "estimated_peak_bytes": estimated,
        "measured_peak_bytes": measured,
        "relative_error": error,
        "tolerance": PLAN_TOLERANCE,
        "ok": error <= PLAN_TOLERANCE,
    }
    if error > PLAN_TOLERANCE:
        raise AssertionError(f"plan estimate off by {error:.1%} (> {PLAN_TOLERANCE:.0%})")


def _train_twice(report: dict[str, Any]) -> None:
    import torch

    from hrm.training.loop import train

    params = paper_params()
    weights = []
    with tempfile.TemporaryDirectory() as tmp:
        paper_dataset(Path(tmp) / "data", groups=64)
        for run in ("a", "b"):
            run_params = {
                "arch": dict(params["arch"]),
                "train": dict(
                    params["train"],
                    global_batch_size=32,
                    epochs=10,
                    eval_interval=10,
                    max_steps=20,
                    deterministic=True,
                    device="cuda",
                ),
                "paths": {
                    "hrm": str(Path(tmp) / "data"),
                    "checkpoints": str(Path(tmp) / run / "checkpoints"),
                    "model": str(Path(tmp) / run / "hrm.pt"),
                    "train_log": str(Path(tmp) / run / "log"),
                },
            }
            summary = train(copy.deepcopy(run_params))
            weights.append(torch.load(run_params["paths"]["model"], weights_only=True))
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    report["determinism"] = {
        "steps": summary["step"],
        "identical": not differing,
        "differing": differing[:10],
    }
    if differing:
        raise AssertionError(f"{len(differing)} weight tensors differ between two deterministic runs")


def _quick_profile(report: dict[str, Any]) -> None:
    import yaml

    from hrm.config import apply_profile

    params = apply_profile(paper_params(), "quick")
    params["train"]["device"] = "cuda"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        params["paths"] = {k: str(Path(tmp) / Path(v)) for k, v in params["paths"].items()}
        config = Path(tmp) / "params.yaml"
        config.write_text(yaml.safe_dump(params), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        for stage in ("generate", "convert", "validate", "train", "evaluate"):
            done = subprocess.run(
                [sys.executable, "-m", f"stages.{stage}", "--params", str(config)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"stage {stage} failed: {done.stderr[-1500:]}")
        metrics = json.loads((Path(params["paths"]["eval_reports"]) / "metrics.json").read_text())
    report["quick_profile"] = {
        "seconds": time.perf_counter() - started,
        "test": {k: v for k, v in metrics.get("test", {}).items() if not isinstance(v, dict)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu_check.json", help="the JSON of figures")
    parser.add_argument("--batch", type=int, default=64, help="rows of the timed paper-shape step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU")
    args = parser.parse_args()
    reason = no_cuda_message()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "errors": {}}
    parts = [
        ("doctor", part_doctor),
        ("step_speed", lambda r: part_step_speed(r, args.batch, args.steps, args.peak_tflops)),
        ("memory_plan", part_memory_plan),
        ("determinism", _train_twice),
        ("quick_profile", _quick_profile),
    ]
    for name, part in parts:
        started = time.perf_counter()
        try:
            part(report)
        except Exception as err:  # record and go on: one JSON with every figure that could be had
            report["errors"][name] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"
        report.setdefault("seconds", {})[name] = time.perf_counter() - started
        print(f"{name}: {'FAILED' if name in report['errors'] else 'ok'} ({report['seconds'][name]:.0f} s)")
        Path(args.out).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
