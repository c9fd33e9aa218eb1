"""The official HRM trainer (sapientinc/HRM) run on CPU on an HRM-layout data folder: "is it HRM or us?".

Nothing of the official code is copied here. The script imports it from a snapshot folder given on the command
line and runs its own `pretrain.launch` (given the config object, as Hydra's decorator allows), so what runs is
their PuzzleDataset sampler (through their DataLoader, one worker), their HierarchicalReasoningModel_ACTV1, their
ACTLossHead, their sign-SGD sparse-embedding optimizer, their `train_batch`, `evaluate`, lr schedule and eval
cadence. What cannot run on a CPU-only PyTorch is replaced, and only that:

- `wandb` (logging service): a stand-in module whose `log` records every call; `wandb.run` stays None, so
  `save_code_and_config` does nothing. `coolname` (run-name generator, not installed): a stand-in; the run name
  is given, so it is never called.
- `adam_atan2` (a CUDA-only extension): `AdamATan2` below, the update of its kernel (csrc/adam_atan2.cu,
  adam-atan2 0.0.3 on PyPI): per step t, `p *= 1 - lr*wd`; `m = lerp(m, g, 1-b1)`; `v = lerp(v, g^2, 1-b2)`;
  `p -= lr/(1-b1^t) * atan2(m, sqrt(v)/sqrt(1-b2^t))`, fp32 math. The `adam-atan2-pytorch` package is NOT this
  update (it divides m by 1-b1^t inside atan2 and scales by a=1.27); `--check-adam` shows both against ours.
- `flash_attn` (CUDA-only kernels): `flash_attn_func` = `torch.nn.functional.scaled_dot_product_attention` on
  the same [batch, seq, heads, head_dim] tensors (scale 1/sqrt(head_dim), non-causal), output contiguous.
- CUDA placement: `torch.Tensor.cuda` returns the tensor (it is on the CPU already), and `pretrain.py`'s own
  `torch` name is a view of torch whose `device("cuda")` and `zeros(device="cuda")` give the CPU device.
- `models.losses.softmax_cross_entropy` is called on `logits.contiguous()`: its `.view` fails on the
  non-contiguous logits slice in float32 (in bfloat16 the cast before it copies); same values otherwise.
- `torch.compile`: off through the official switch `DISABLE_COMPILE` (CPU compile needs a C++ toolchain).
- `forward_dtype`: float32 (the official default bfloat16 is a GPU choice; our trainer's `auto` is float32 on
  CPU). Torch threads: 1 (`--threads`).

Hyperparameters are read from params.yaml's profile (`hrm.config.run_params`, default `quick`) and mapped
onto the official keys (config/cfg_pretrain.yaml + config/arch/hrm_v1.yaml, composed with Hydra). Test metrics
at each eval are the official `evaluate`'s (exact and token accuracy over the test split, all rows run to
halt_max_steps); the eval's logits are also saved (the official `eval_save_outputs`) and scored as routes by
this repo's `hrm.evaluation.metrics` (route_valid/optimal, the README's measure) -- our scorer on their outputs.

Commands (from the repository root):

    # 1. the official snapshot (commit 42410da), as a plain folder
    mkdir -p /tmp/official-hrm
    git --git-dir=/work/.mirror/sapientinc+HRM/repo archive 42410da | tar -x -C /tmp/official-hrm
    #    (or: git clone https://github.com/sapientinc/HRM /tmp/official-hrm && git -C /tmp/official-hrm checkout 42410da)

    # 2. the quick data (the same params as `hrm compare --profile quick`, so the same bytes)
    mkdir -p /tmp/quick-data && python - <<'EOF'
    import yaml; from hrm.config import load_params, run_params
    p = run_params(load_params("params.yaml"), "quick")
    p["paths"].update(raw="/tmp/quick-data/raw", hrm="/tmp/quick-data/hrm")
    yaml.safe_dump(p, open("/tmp/quick-data/params.yaml", "w"), sort_keys=False)
    EOF
    python -m stages.generate --params /tmp/quick-data/params.yaml
    python -m stages.convert --params /tmp/quick-data/params.yaml

    # 3. a smoke run (1 epoch = 120 steps, one eval), then the quick budget (2,880 steps, evals at 1,440, 2,880)
    PYTHONPATH=$PWD python bench/official_hrm.py --official /tmp/official-hrm --commit 42410da \\
        --data /tmp/quick-data/hrm --out /tmp/official-smoke.json --set train.epochs=1 --set train.eval_interval=1
    PYTHONPATH=$PWD nice -n 10 python bench/official_hrm.py --official /tmp/official-hrm --commit 42410da \\
        --data /tmp/quick-data/hrm --seed 0 --out /tmp/official-quick-s0.json

    # the optimizer check alone (seconds)
    PYTHONPATH=$PWD python bench/official_hrm.py --check-adam
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
# The official files this harness runs (hashed into the output so a result names the code that made it).
OFFICIAL_FILES = (
    "pretrain.py",
    "puzzle_dataset.py",
    "models/hrm/hrm_act_v1.py",
    "models/losses.py",
    "models/sparse_embedding.py",
    "models/layers.py",
    "models/common.py",
    "config/cfg_pretrain.yaml",
    "config/arch/hrm_v1.yaml",
)


# ---- stand-ins for what a CPU-only PyTorch cannot import ---------------------------------------------------


class AdamATan2(torch.optim.Optimizer):
    """adam-atan2 0.0.3's update in plain PyTorch (see the module docstring); same constructor as the package."""

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), weight_decay=1e-2
    ):
        if lr < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid lr {lr}, betas {betas} or weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)  # the package keeps a float32 count
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1.0 - lr * wd)
                m.lerp_(p.grad, 1.0 - beta1)
                v.lerp_(p.grad.square(), 1.0 - beta2)
                denom = v.sqrt() / math.sqrt(1.0 - beta2**t)
                p.add_(torch.atan2(m, denom), alpha=-lr / (1.0 - beta1**t))


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, **_: Any):
    """flash-attn's [batch, seq, heads, head_dim] interface on PyTorch's scaled_dot_product_attention."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    )
    return out.transpose(1, 2).contiguous()


class WandbRecorder(types.ModuleType):
    """`wandb` as pretrain.py uses it: init/log/finish/Settings; every `log` call is kept in `records`."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.run = None
        self.records: list[tuple[int, dict[str, Any]]] = []

    def init(self, **_: Any) -> None:
        return None

    def Settings(self, **kwargs: Any) -> dict[str, Any]:  # noqa: N802 (wandb's name)
        return kwargs

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.records.append((int(step or 0), metrics))

    def finish(self) -> None:
        return None


def _on_cpu(device: Any) -> Any:
    return "cpu" if device is not None and str(device).startswith("cuda") else device


class TorchOnCpu:
    """pretrain.py's `torch` name: torch itself, except that "cuda" devices are the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def device(spec: Any, *args: Any) -> torch.device:
        return torch.device(_on_cpu(spec), *args)

    @staticmethod
    def zeros(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(*args, device=_on_cpu(device), **kwargs)


def import_official(snapshot: Path) -> tuple[Any, WandbRecorder]:
    """pretrain (the official module) with the stand-ins installed; the recorder that stands in for wandb."""
    for name in OFFICIAL_FILES:
        if not (snapshot / name).is_file():
            raise SystemExit(f"{snapshot}: {name} is missing; is this the sapientinc/HRM snapshot?")
    recorder = WandbRecorder()
    sys.modules["wandb"] = recorder
    coolname = types.ModuleType("coolname")
    coolname.generate_slug = lambda n=2: "-".join(["cpu"] * n)  # type: ignore[attr-defined]
    sys.modules["coolname"] = coolname
    adam = types.ModuleType("adam_atan2")
    adam.AdamATan2 = AdamATan2  # type: ignore[attr-defined]
    sys.modules["adam_atan2"] = adam
    flash = types.ModuleType("flash_attn")
    flash.flash_attn_func = flash_attn_func  # type: ignore[attr-defined]
    sys.modules["flash_attn"] = flash
    sys.modules.pop("flash_attn_interface", None)
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    os.environ["DISABLE_COMPILE"] = "1"
    sys.path.insert(0, str(snapshot))
    import pretrain  # the official module

    if not Path(pretrain.__file__).resolve().is_relative_to(snapshot.resolve()):
        raise SystemExit(f"imported pretrain from {pretrain.__file__}, not from {snapshot}")
    pretrain.torch = TorchOnCpu()
    # Their softmax_cross_entropy calls `.view` on the logits, which are a slice `[:, puzzle_emb_len:]` of the
    # lm_head output and so not contiguous; on their GPU path (bfloat16) the `.to(float32)` before it copies,
    # in float32 it is a no-op and `.view` raises. Same function on a contiguous copy (same values). ACTLossHead
    # looks the loss up in the module's globals when it is built, so this is set before the model exists.
    from models import losses

    official_softmax_ce = losses.softmax_cross_entropy

    def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
        return official_softmax_ce(logits.contiguous(), labels, ignore_index=ignore_index)

    losses.softmax_cross_entropy = softmax_cross_entropy
    return pretrain, recorder


# ---- config: our profile's values on the official keys ------------------------------------------------------


def our_params(params_file: Path, profile: str, overrides: list[str]) -> dict[str, Any]:
    from hrm.config import load_params, run_params

    return run_params(load_params(params_file), profile, overrides, params_file)


def official_overrides(
    params: dict[str, Any], data: Path, seed: int, checkpoint_path: Path, run_name: str
) -> list[str]:
    """Hydra overrides of cfg_pretrain.yaml / arch/hrm_v1.yaml that give our run's hyperparameters."""
    arch, train = params["arch"], params["train"]
    if arch["name"] != "hrm_v1":
        raise SystemExit(f"arch.name is {arch['name']}; the official trainer runs hrm_v1 only")
    for key, ours in (("puzzle_emb_len", 0), ("no_ACT_continue", False), ("mlp_t", False)):
        if arch.get(key, ours) != ours:
            raise SystemExit(f"arch.{key}={arch[key]} has no official HRM equivalent (HRM: {ours})")
    dtype = "float32" if arch["forward_dtype"] == "auto" else arch["forward_dtype"]
    values = {
        "data_path": str(data),
        "seed": seed,
        "project_name": "official-hrm-cpu",
        "run_name": run_name,
        "checkpoint_path": str(checkpoint_path),
        "eval_save_outputs": "[inputs,labels,puzzle_identifiers,logits]",
        "arch.loss.loss_type": arch["loss"],
        "arch.forward_dtype": dtype,
        "arch.rope_theta": arch["rope_theta"],
        "arch.rms_norm_eps": arch["rms_norm_eps"],
    }
    for key in ("H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size", "num_heads", "expansion"):
        values[f"arch.{key}"] = arch[key]
    for key in ("pos_encodings", "puzzle_emb_ndim", "halt_max_steps", "halt_exploration_prob"):
        values[f"arch.{key}"] = arch[key]
    for key in ("global_batch_size", "epochs", "eval_interval", "lr", "lr_min_ratio", "lr_warmup_steps"):
        values[key] = train[key]
    for key in ("beta1", "beta2", "weight_decay", "puzzle_emb_lr", "puzzle_emb_weight_decay"):
        values[key] = train[key]
    # "++": set the key whether the yaml has it or not (seed, run_name, forward_dtype, ... are pydantic defaults)
    return [f"++{k}={v!r}" if isinstance(v, float) else f"++{k}={v}" for k, v in values.items()]


def compose(snapshot: Path, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(snapshot / "config"), version_base=None):
        return hydra_compose(config_name="cfg_pretrain", overrides=overrides)


# ---- scoring and provenance ----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def route_scores(data: Path, preds_file: Path) -> dict[str, Any]:
    """The official eval's saved outputs scored by this repo's evaluate-stage rule (exact, token, route)."""
    from hrm.evaluation import metrics as M
    from hrm.evaluation.data import load_route_task
    from hrm.training.data import IGNORE_LABEL, DatasetMetadata

    saved = torch.load(preds_file, weights_only=True)
    labels = saved["labels"].numpy()
    labelled = (labels != IGNORE_LABEL).any(-1)  # padding rows of the last test batch have no label
    inputs = saved["inputs"].numpy()[labelled]
    identifiers = saved["puzzle_identifiers"].numpy()[labelled]
    preds = saved["logits"].argmax(-1).numpy()[labelled]
    labels = labels[labelled]
    task = load_route_task(data, DatasetMetadata.from_file(data / "test" / "dataset.json"))
    optimum = M.optimal_costs(inputs, identifiers, task) if task is not None else None
    scores = M.score_predictions(inputs, preds, labels, identifiers, IGNORE_LABEL, task, optimum)
    return M.aggregate(scores, optimum)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def window_means(records: list[tuple[int, dict[str, Any]]], size: int) -> list[dict[str, Any]]:
    """Train metrics (per step, as the official train_batch returns them) averaged over windows of `size`."""
    rows: dict[int, list[dict[str, float]]] = {}
    for step, metrics in records:
        if any(k.startswith("train/") for k in metrics):
            rows.setdefault((step - 1) // size, []).append({k: float(v) for k, v in metrics.items()})
    out = []
    for index in sorted(rows):
        chunk = rows[index]
        keys = sorted({k for row in chunk for k in row})
        means = {k: float(np.mean([row[k] for row in chunk if k in row])) for k in keys}
        out.append({"first_step": index * size + 1, "last_step": index * size + len(chunk), **means})
    return out


# ---- the optimizer check ------------------------------------------------------------------------------------


def check_adam(steps: int = 200) -> dict[str, float]:
    """Max |difference| of the parameters after `steps` updates on the same random gradients (float64):
    this AdamATan2 vs our hrm.optim.AdamATan2 and vs adam_atan2_pytorch.AdamAtan2 (a=1.27 default, and a=1)."""
    from adam_atan2_pytorch import AdamAtan2 as PackageAdamAtan2

    from hrm.optim import AdamATan2 as OurAdamATan2

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(4096, generator=gen, dtype=torch.float64) * 0.02
    grads = [torch.randn(4096, generator=gen, dtype=torch.float64) * 1e-3 for _ in range(steps)]
    kwargs = dict(lr=5e-4, betas=(0.9, 0.95), weight_decay=0.1)
    makers = {
        "harness": lambda p: AdamATan2([p], **kwargs),
        "hrm.optim": lambda p: OurAdamATan2([p], **kwargs),
        "adam_atan2_pytorch_a1.27": lambda p: PackageAdamAtan2([p], **kwargs),
        "adam_atan2_pytorch_a1": lambda p: PackageAdamAtan2([p], a=1.0, **kwargs),
    }
    final = {}
    for name, make in makers.items():
        p = torch.nn.Parameter(start.clone())
        opt = make(p)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        final[name] = p.detach()
    moved = float((final["harness"] - start).abs().max())
    diff = {
        f"max_abs_diff_vs_{k}": float((final["harness"] - v).abs().max())
        for k, v in final.items()
        if k != "harness"
    }
    return {"steps": steps, "max_abs_move": moved, **diff}


# ---- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="folder of the sapientinc/HRM snapshot")
    parser.add_argument(
        "--commit", default="", help="the snapshot's commit (recorded; git rev-parse when a repo)"
    )
    parser.add_argument("--data", type=Path, help="HRM-layout data folder (the convert stage's output)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--profile", default="quick")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override after the profile, e.g. train.epochs=1 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON result file")
    parser.add_argument("--work", type=Path, help="folder for the official checkpoints and eval outputs")
    parser.add_argument("--check-adam", action="store_true", help="only compare the AdamATan2 updates")
    args = parser.parse_args()

    if args.check_adam:
        print(json.dumps(check_adam(), indent=2))
        return
    if args.official is None or args.data is None or args.out is None:
        parser.error("--official, --data and --out are required for a run")
    snapshot, data = args.official.resolve(), args.data.resolve()
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(args.threads)

    params = our_params(args.params, args.profile, args.overrides)
    work = args.work or Path(tempfile.mkdtemp(prefix="official-hrm-"))
    run_name = f"{args.profile}-s{args.seed}"
    overrides = official_overrides(params, data, args.seed, work / run_name, run_name)
    pretrain, recorder = import_official(snapshot)
    cfg = compose(snapshot, overrides)

    commit = args.commit
    if (snapshot / ".git").exists():  # a clone or worktree of its own (not a folder inside another repo)
        import subprocess

        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            commit = subprocess.run(
                ["git", "-C", str(snapshot), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
    print(
        f"official HRM {commit or '(commit not given)'} from {snapshot}; overrides: {' '.join(overrides)}",
        flush=True,
    )

    started = time.perf_counter()
    pretrain.launch(cfg)  # Hydra's decorator passes a given config straight to the function
    wall = time.perf_counter() - started

    train = params["train"]
    total_steps = int(
        train["epochs"]
        * json.loads((data / "train" / "dataset.json").read_text())["total_groups"]
        / train["global_batch_size"]
    )
    evals = []
    for step, metrics in recorder.records:
        if "all" in metrics:  # the official evaluate's result: {set name: {metric: value}}
            row = {"step": step, **{k: float(v) for k, v in metrics["all"].items()}}
            preds_file = work / run_name / f"step_{step}_all_preds.0"
            if preds_file.exists():
                row["scored_by_hrm_evaluation"] = route_scores(data, preds_file)
            evals.append(row)
    train_steps = [s for s, m in recorder.records if "train/lm_loss" in m]
    result = {
        "official_repo": "sapientinc/HRM",
        "official_commit": commit,
        "official_sha256": {name: sha256(snapshot / name) for name in OFFICIAL_FILES},
        "data": str(data),
        "data_sha256": {
            p.relative_to(data).as_posix(): sha256(p) for p in sorted(data.rglob("*")) if p.is_file()
        },
        "profile": args.profile,
        "overrides": args.overrides,
        "official_config": _plain(pretrain.PretrainConfig(**cfg).model_dump()),
        "seed": args.seed,
        "steps": max(train_steps, default=0),
        "planned_steps": total_steps,
        "wall_s": round(wall, 1),
        "s_per_step": round(wall / max(1, max(train_steps, default=0)), 4),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "replaced": [
            "wandb: recorder stand-in",
            "coolname: stand-in (unused, run name given)",
            "adam_atan2.AdamATan2: pure-PyTorch copy of the 0.0.3 kernel's update",
            "flash_attn.flash_attn_func: torch scaled_dot_product_attention",
            "Tensor.cuda -> identity; pretrain.torch.device/zeros: cuda -> cpu",
            "losses.softmax_cross_entropy on logits.contiguous() (their .view fails in float32)",
            "torch.compile off (DISABLE_COMPILE)",
            "forward_dtype float32",
        ],
        "test_evals": evals,
        "train_epoch_means": window_means(recorder.records, max(1, total_steps // train["epochs"])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for row in evals:
        route = row.get("scored_by_hrm_evaluation", {})
        print(
            f"step {row['step']}: test exact {row['exact_accuracy']:.4f}  token {row['accuracy']:.4f}  "
            f"route-optimal {route.get('route_optimal_rate')}  valid {route.get('route_valid_rate')}"
        )
    print(
        f"seed {args.seed}: {result['steps']} steps in {wall:.0f} s on {result['cpu_model']} "
        f"({result['cpu_capability']}), torch {torch.__version__}, {result['threads']} thread(s) -> {args.out}"
    )


if __name__ == "__main__":
    main()
