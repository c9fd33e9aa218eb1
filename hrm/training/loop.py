"""`train(params)`: the whole run, single process or under torchrun, resumable from its own checkpoints."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm.config import ConfigError, section
from hrm.io import UserError, atomic_write_bytes
from hrm.runtime import resolve_device, seed_everything, set_cpu_threads, set_determinism
from hrm.training.ema import WeightEMA

CHECKPOINT_SOURCES = ("dataset.json",)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written; running `train` again resumes from it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True)
class TrainConfig:
    """The `train` section of params.yaml, type-checked once so errors name the key."""

    seed: int
    global_batch_size: int
    epochs: int
    eval_interval: int
    lr: float
    lr_min_ratio: float
    lr_warmup_steps: int
    beta1: float
    beta2: float
    weight_decay: float
    puzzle_emb_lr: float
    puzzle_emb_weight_decay: float
    deterministic: bool
    compile: bool
    device: str
    threads: int
    max_steps: int
    ema: bool
    ema_rate: float
    micro_batch_size: int | str  # "auto" or rows per micro-batch (gradient accumulation)
    activation_checkpointing: bool

    @classmethod
    def from_params(cls, train: dict[str, Any]) -> TrainConfig:
        """Types and ranges are schemas/params.schema.json's (hrm.config.load_params); this adds what a
        schema cannot say."""
        config = cls(
            **{
                name: float(train[name]) if kind == "float" else train[name]
                for name, kind in cls.__annotations__.items()
            }
        )
        if config.epochs % config.eval_interval:
            raise ConfigError(
                f"params.yaml: train.eval_interval {config.eval_interval} must divide train.epochs {config.epochs}"
            )
        return config


@dataclass(frozen=True)
class Distributed:
    rank: int
    local_rank: int
    world_size: int


# ---- the model package, as docs/design.md "Model contract" describes it --------------------------------


def build_model(arch: dict[str, Any], metadata: Any, batch_size: int, device: Any, seed: int) -> Any:
    from hrm.models import build_model as build

    return build(
        arch,
        seq_len=metadata.seq_len,
        vocab_size=metadata.vocab_size,
        num_puzzle_identifiers=metadata.num_puzzle_identifiers,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )


def build_optimizers(module: Any, config: TrainConfig) -> tuple[list[Any], list[float]]:
    """HRM's pair: sign-SGD on the puzzle-embedding table, AdamATan2 on every parameter; base lrs in order."""
    from hrm.optim import AdamATan2, SparseSignSGD

    optimizers: list[Any] = []
    base_lrs: list[float] = []
    if module.puzzle_emb is not None:
        optimizers.append(
            SparseSignSGD(module.puzzle_emb, lr=0.0, weight_decay=config.puzzle_emb_weight_decay)
        )
        base_lrs.append(config.puzzle_emb_lr)
    # lr 0 until the schedule sets it before the first step (HRM does the same).
    optimizers.append(
        AdamATan2(
            module.parameters(), lr=0.0, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
        )
    )
    base_lrs.append(config.lr)
    return optimizers, base_lrs


def make_lr_for(config: TrainConfig, total_steps: int) -> Callable[[int, float], float]:
    from hrm.optim import lr_at

    def lr_for(step: int, base_lr: float) -> float:
        return lr_at(
            step,
            base_lr=base_lr,
            warmup_steps=config.lr_warmup_steps,
            total_steps=total_steps,
            min_ratio=config.lr_min_ratio,
        )

    return lr_for


# ---- setup helpers ---------------------------------------------------------------------------------------


def distributed_from_env() -> Distributed:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({err})") from err
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size)


@contextmanager
def stop_signals() -> Iterator[dict[str, int | None]]:
    """SIGINT/SIGTERM set a flag the loop reads after each step; a second signal aborts at once."""
    received: dict[str, int | None] = {"signum": None}

    def handler(signum: int, _frame: Any) -> None:
        if received["signum"] is not None:
            raise KeyboardInterrupt
        received["signum"] = signum

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def sampler_local_batch(config: TrainConfig, world_size: int) -> int:
    from hrm.training.data import check_batch_split

    return check_batch_split(config.global_batch_size, world_size)


def fixed_micro_batch(config: TrainConfig, world_size: int) -> int | None:
    """The configured micro-batch if it is a number (checked to divide each process's rows), None for auto."""
    local = sampler_local_batch(config, world_size)
    if config.micro_batch_size == "auto":
        return None
    micro = int(config.micro_batch_size)
    if local % micro:
        raise ConfigError(
            f"params.yaml: train.micro_batch_size {micro} does not divide the {local} rows per process "
            f"(train.global_batch_size {config.global_batch_size} / {world_size} processes); "
            f"use a divisor of {local} or auto"
        )
    return micro


def set_activation_checkpointing(module: Any, enabled: bool) -> None:
    """Switch recomputation on in every block stack that supports it; refuse a model that has none."""
    stacks = [m for m in module.modules() if hasattr(m, "activation_checkpointing")]
    if enabled and not stacks:
        raise ConfigError(
            f"params.yaml: train.activation_checkpointing is true but arch.name "
            f"{type(getattr(module, 'model', module)).__name__} does not support it"
        )
    for stack in stacks:
        stack.activation_checkpointing = enabled


def map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def carry_to_state(carry: Any) -> Any:
    return None if carry is None else map_tensors(carry.to_state(), lambda t: t.detach().cpu())


def carry_from_state(state: Any, device: Any) -> Any:
    from hrm.models import ACTCarry

    return None if state is None else ACTCarry.from_state(state, device=device)


def check_output_paths(paths: dict[str, Any], rank: int) -> None:
    """Every folder this process writes to must take a file now, not after the last step (hrm.io.check_writable):
    checkpoints on every rank, the weights, dvclive folder and timing file on rank 0."""
    from hrm.io import check_writable

    folders = {"checkpoints": Path(paths["checkpoints"])}
    if rank == 0:
        folders.update(model=Path(paths["model"]).parent, train_log=Path(paths["train_log"]))
        if isinstance(paths.get("train_timing"), str):
            folders["train_timing"] = Path(paths["train_timing"]).parent
    for key, folder in folders.items():
        check_writable(folder, f"params.yaml: paths.{key} {paths[key]}")


def write_weights(module: Any, path: Path) -> None:
    """Final state_dict in HRM's official key layout, loadable with torch.load(weights_only=True)."""
    import torch

    state = {k.removeprefix("_orig_mod."): v.detach().cpu() for k, v in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ---- the run ---------------------------------------------------------------------------------------------


def train(params: dict[str, Any]) -> dict[str, Any]:
    """Train as params.yaml says; return a summary (steps done, last eval metrics, checkpoint, model path)."""
    import torch

    from hrm.evaluation.data import load_route_task
    from hrm.training.checkpoint import CheckpointStore, fingerprint, rng_states, set_rng_states
    from hrm.training.data import PuzzleDataset, TrainSampler, eval_batches, planned_steps
    from hrm.training.logging import RunLogger
    from hrm.training.memory import oom_message, plan_micro_batch
    from hrm.training.step import TrainingDiverged, TrainState, evaluate, train_step

    arch = section(params, "arch")
    config = TrainConfig.from_params(section(params, "train"))
    paths = section(params, "paths")
    data_root = Path(paths["hrm"])

    dist_info = distributed_from_env()
    rank, world_size = dist_info.rank, dist_info.world_size
    configured_micro = fixed_micro_batch(config, world_size)  # a bad split fails here, before any work
    check_output_paths(paths, rank)
    device = resolve_device(config.device, dist_info.local_rank)
    set_cpu_threads(config.threads)
    set_determinism(config.deterministic, device)
    process_group = False
    if world_size > 1:
        import torch.distributed as dist

        if device.type == "mps":
            raise UserError(
                "torchrun on Apple GPUs is not supported (no collective backend); use one process"
            )
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        process_group = True
    try:
        train_set = PuzzleDataset(data_root, "train")
        test_set = PuzzleDataset(data_root, "test")
        route_task = load_route_task(data_root, test_set.metadata)  # None: no routing.json, no route metrics
        total_steps = planned_steps(train_set.metadata, config.epochs, config.global_batch_size)
        stop_at = min(total_steps, config.max_steps) if config.max_steps else total_steps
        meta = train_set.metadata
        per_iteration = config.eval_interval * meta.total_groups * meta.mean_puzzle_examples
        if per_iteration < config.global_batch_size:
            raise UserError(
                f"params.yaml: train.global_batch_size {config.global_batch_size} exceeds the ~{per_iteration:g} "
                f"examples of one eval interval ({config.eval_interval} epochs x {meta.total_groups} groups): "
                "no full batch to train on; raise train.eval_interval or lower the batch"
            )
        if rank == 0:
            print(
                f"planned steps: {total_steps} = int(epochs {config.epochs} x groups {meta.total_groups} x "
                f"mean puzzle examples {meta.mean_puzzle_examples:g} / global batch {config.global_batch_size})"
                + (f"; stopping at train.max_steps = {stop_at}" if stop_at < total_steps else ""),
                flush=True,
            )
            print(f"device: {device}, processes: {world_size}", flush=True)

        seed_everything(config.seed + rank)  # HRM: seed + rank for whatever draws from the global RNGs
        try:
            plan = plan_micro_batch(
                arch, train_set.metadata, config, world_size, device, configured_micro, train_set
            )
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                oom_message(configured_micro or config.global_batch_size // world_size, None)
            ) from None
        if rank == 0:
            print(f"memory plan: {plan.describe()}", flush=True)
        # Weights from their own seeded generator: identical on every rank (and device) even before broadcast.
        module = build_model(arch, train_set.metadata, plan.micro_batch, device, config.seed)
        set_activation_checkpointing(module, config.activation_checkpointing)
        if world_size > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for tensor in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(tensor, src=0)
        # The model's own draws (halt exploration): a CPU generator, so its state is portable and a CUDA run
        # draws the same numbers as a CPU run. The same seed on every rank: each step draws for the whole
        # global batch and each rank takes its rows (hrm.training.step.step_draws), so the run does not depend
        # on the number of processes or micro-batches (HRM seeds seed + rank instead).
        generator = torch.Generator()
        generator.manual_seed(config.seed)
        optimizers, base_lrs = build_optimizers(module, config)
        head = torch.compile(module, dynamic=False) if config.compile else module
        module.train()
        ema = WeightEMA(module, config.ema_rate) if config.ema else None
        state = TrainState(
            head=head, module=module, optimizers=optimizers, base_lrs=base_lrs, generator=generator, ema=ema
        )
        sampler = TrainSampler(
            train_set,
            config.global_batch_size,
            config.eval_interval,
            config.seed,
            rank=rank,
            world_size=world_size,
        )
        iterations = config.epochs // config.eval_interval

        data_texts = {
            split: (data_root / split / "dataset.json").read_text(encoding="utf-8")
            for split in ("train", "test")
        }
        store = CheckpointStore(
            paths["checkpoints"], fingerprint(arch, section(params, "train"), data_texts), rank, world_size
        )
        store.check_shared()  # multi-node: every rank must see rank 0's checkpoints
        history = None
        last_eval_step = -1
        latest = store.latest()
        if latest is not None:
            common, own = store.load(latest)
            module.load_state_dict(common["model"])
            for optimizer, saved in zip(optimizers, common["optimizers"], strict=True):
                optimizer.load_state_dict(saved)
            sampler.load_state_dict(common["sampler"])
            if ema is not None:
                ema.load_state_dict(common.get("ema", {}), source=str(latest / "common.pt"))
            state.step = int(common["step"])
            last_eval_step = int(common["last_eval_step"])
            history = common["history"] if rank == 0 else None
            state.carry = carry_from_state(own["carry"], device)
            generator.set_state(own["generator"])
            set_rng_states(own["rng"])
            if rank == 0:
                print(f"resuming from {latest} (step {state.step})", flush=True)
        elif rank == 0:
            print(f"no checkpoint in {store.folder}: starting from scratch", flush=True)

        if rank == 0 and isinstance(paths.get("train_timing"), str):
            Path(paths["train_timing"]).unlink(missing_ok=True)  # a stale one would time another run
        logger = RunLogger(paths["train_log"], rank == 0, stop_at, initial_step=state.step, history=history)
        lr_for = make_lr_for(config, total_steps)
        eval_metrics: dict[str, float] = {}

        def checkpoint() -> Path:
            common = {
                "model": module.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers],
                "sampler": sampler.state_dict(),
                "last_eval_step": last_eval_step,
                "total_steps": total_steps,
                "history": logger.history(),
            }
            if ema is not None:
                common["ema"] = ema.state_dict()
            own = {
                "carry": carry_to_state(state.carry),
                "generator": generator.get_state(),
                "rng": rng_states(),
            }
            return store.save(state.step, common, own)

        def run_eval() -> None:
            nonlocal last_eval_step, eval_metrics
            eval_metrics = evaluate(
                state,
                eval_batches(test_set, plan.micro_batch * world_size, rank, world_size),
                device=device,
                world_size=world_size,
                route_task=route_task,
            )
            logger.log_eval(state.step, eval_metrics)
            last_eval_step = state.step

        started = time.perf_counter()
        first_step = state.step
        saved = latest
        try:
            with stop_signals() as received:
                while sampler.iteration < iterations and state.step < stop_at:
                    batch = sampler.next_batch()
                    if batch is None:  # iteration over: eval, move to the next, checkpoint there
                        run_eval()
                        sampler.start_iteration(sampler.iteration + 1)
                        saved = checkpoint()
                        continue
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    result = train_step(
                        state,
                        batch,
                        global_batch_size=config.global_batch_size,
                        lr_for=lr_for,
                        world_size=world_size,
                        rank=rank,
                        micro_batch_size=plan.micro_batch,
                        stop_requested=received["signum"] is not None,
                    )
                    logger.log_train(state.step, result.metrics)
                    if result.stop_requested:
                        saved = checkpoint()
                        signum = received["signum"] or signal.SIGTERM
                        raise TrainingInterrupted(
                            f"stopped at step {state.step}; checkpoint {saved}. Run train again to resume.",
                            signum,
                        )
                if last_eval_step != state.step:  # stopped by step count inside an iteration
                    run_eval()
                    saved = checkpoint()
        except TrainingDiverged as err:
            raise TrainingDiverged(
                f"{err} Last good checkpoint: {saved or 'none yet'}.", err.culprit
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise UserError(oom_message(plan.micro_batch, saved)) from None
        except BaseException as err:
            if not isinstance(err, TrainingInterrupted):
                logger.write(f"run ended abnormally; last good checkpoint: {saved}")
            raise
        finally:
            logger.close()
        elapsed = time.perf_counter() - started
        if rank == 0:
            with ema.applied(module) if ema is not None else nullcontext():
                write_weights(module, Path(paths["model"]))
            done = state.step - first_step
            write_timing(paths.get("train_timing"), elapsed, done, first_step, world_size, device)
            print(
                f"trained {done} steps in {elapsed:.1f} s"
                + (f" ({elapsed / done:.3f} s/step)" if done else "")
                + f"; weights: {paths['model']}",
                flush=True,
            )
        return {"step": state.step, "eval": eval_metrics, "checkpoint": str(saved), "model": paths["model"]}
    finally:
        if process_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def write_timing(
    path: str | None, elapsed: float, steps: int, first_step: int, world_size: int, device: Any
) -> None:
    """Wall time of this process's training loop, outside the dvclive folder: timings differ run to run, the
    metrics there must not. A resumed run times only the steps it did itself (`resumed_from_step`)."""
    if not isinstance(path, str):
        return
    import torch

    from hrm.io import atomic_write_json

    atomic_write_json(
        Path(path),
        {
            "wall_s": round(elapsed, 3),
            "steps": steps,
            "steps_per_s": round(steps / elapsed, 4) if elapsed > 0 and steps else 0.0,
            "resumed_from_step": first_step,
            "processes": world_size,
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
    )
