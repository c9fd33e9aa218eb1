"""Everything `train()` does before its first step: settings, processes, outputs, data, the memory plan, the
state (hrm.training.state.new_state) and where a checkpoint says to resume. `prepared_run` hands over a `Run`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm.config import DEFAULT_PARAMS, ConfigError, section
from hrm.io import UserError


def train_rules(params: dict[str, Any], source: str | Path = DEFAULT_PARAMS, world_size: int = 1) -> None:
    """The trainer's rules between keys, before any work: eval_interval divides epochs, the global batch splits
    over the processes, a fixed micro-batch divides each process's rows (the model's own rules are checked when
    the trainer builds it from the data; `hrm.rules.check_rules` applies all of them for the tools)."""
    from hrm.training.data import check_batch_split

    train = section(params, "train", source)
    epochs, interval = int(train["epochs"]), int(train["eval_interval"])
    if epochs % interval:
        raise ConfigError(f"{source}: train.eval_interval {interval} must divide train.epochs {epochs}")
    global_batch = int(train["global_batch_size"])
    local = check_batch_split(global_batch, world_size)
    micro = train.get("micro_batch_size", "auto")
    if micro != "auto" and local % int(micro):
        raise ConfigError(
            f"{source}: train.micro_batch_size {micro} does not divide the {local} rows per process "
            f"(train.global_batch_size {global_batch} / {world_size} processes); use a divisor of {local} or auto"
        )


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
        """Types and ranges are checked by schemas/params.schema.json, rules between keys by
        `train_rules` (`prepared_run` applies both before this)."""
        values = {
            name: float(train[name]) if kind == "float" else train[name]
            for name, kind in cls.__annotations__.items()
        }
        return cls(**values)


@dataclass(frozen=True)
class Distributed:
    rank: int
    local_rank: int
    world_size: int


def distributed_from_env() -> Distributed:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process."""
    try:
        return Distributed(
            *(int(os.environ.get(key, "0")) for key in ("RANK", "LOCAL_RANK")),
            int(os.environ.get("WORLD_SIZE", "1")),
        )
    except ValueError as err:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({err})") from err


def fixed_micro_batch(config: TrainConfig) -> int | None:
    """The configured micro-batch if it is a number (`train_rules` checked that it divides each
    process's rows), None for auto."""
    return None if config.micro_batch_size == "auto" else int(config.micro_batch_size)


def check_output_paths(paths: dict[str, Any], rank: int) -> None:
    """Probe now, not after the last step, every folder this rank writes (rank 0: weights, dvclive, timing)."""
    from hrm.io import check_writable

    folders = {"checkpoints": Path(paths["checkpoints"])}
    if rank == 0:
        folders.update(model=Path(paths["model"]).parent, train_log=Path(paths["train_log"]))
        if isinstance(paths.get("train_timing"), str):
            folders["train_timing"] = Path(paths["train_timing"]).parent
    for key, folder in folders.items():
        check_writable(folder, f"params.yaml: paths.{key} {paths[key]}")


class Run:
    """A run ready for its first (or resumed) step: data, memory plan, state (sampler included), checkpoint
    store and logger; `saved` is the last good checkpoint, `eval_metrics` the last eval's."""

    def __init__(
        self, params: dict[str, Any], config: TrainConfig, dist: Distributed, device: Any, micro: int | None
    ):
        import torch

        from hrm.evaluation.data import load_route_task
        from hrm.optim import LrSchedule
        from hrm.runtime import seed_everything
        from hrm.training.data import PuzzleDataset, TrainSampler, planned_steps
        from hrm.training.logging import RunLogger
        from hrm.training.memory import oom_message, plan_micro_batch
        from hrm.training.state import new_state

        self.config, self.dist, self.device, self.paths = config, dist, device, params["paths"]
        arch, data_root = section(params, "arch"), Path(self.paths["hrm"])
        train_set, self.test_set = (PuzzleDataset(data_root, split) for split in ("train", "test"))
        self.route_task = load_route_task(data_root, self.test_set.metadata)  # None: no routing.json
        meta = train_set.metadata
        self.total_steps = planned_steps(meta, config.epochs, config.global_batch_size)
        self.stop_at = min(self.total_steps, config.max_steps) if config.max_steps else self.total_steps
        self.announce(meta)
        seed_everything(config.seed + dist.rank)  # HRM: seed + rank for whatever draws from the global RNGs
        try:
            self.plan = plan_micro_batch(arch, meta, config, dist.world_size, device, micro, train_set)
            if dist.rank == 0:
                print(f"memory plan: {self.plan.describe()}", flush=True)
            rows = self.plan.micro_batch
            self.state = new_state(arch, meta, config, rows, device, dist.world_size, config.compile)
        except torch.cuda.OutOfMemoryError:
            raise UserError(oom_message(micro or config.global_batch_size // dist.world_size, None)) from None
        self.state.sampler = TrainSampler(
            train_set, config.global_batch_size, config.eval_interval, config.seed, dist.rank, dist.world_size
        )
        history = self.resume(params)
        if dist.rank == 0 and isinstance(self.paths.get("train_timing"), str):
            Path(self.paths["train_timing"]).unlink(missing_ok=True)  # a stale one would time another run
        log_dir, step = self.paths["train_log"], self.state.step
        self.logger = RunLogger(log_dir, dist.rank == 0, self.stop_at, initial_step=step, history=history)
        self.eval_metrics: dict[str, float] = {}
        self.iterations = config.epochs // config.eval_interval
        self.schedule = LrSchedule(config.lr_warmup_steps, self.total_steps, config.lr_min_ratio)

    def announce(self, meta: Any) -> None:
        """Refuse a batch no eval interval can fill; print the planned steps and where they run (rank 0)."""
        config, total_steps, stop_at = self.config, self.total_steps, self.stop_at
        per_iteration = config.eval_interval * meta.total_groups * meta.mean_puzzle_examples
        if per_iteration < config.global_batch_size:
            raise UserError(
                f"params.yaml: train.global_batch_size {config.global_batch_size} exceeds the ~{per_iteration:g} "
                f"examples of one eval interval ({config.eval_interval} epochs x {meta.total_groups} groups): "
                "no full batch to train on; raise train.eval_interval or lower the batch"
            )
        if self.dist.rank == 0:
            print(
                f"planned steps: {total_steps} = int(epochs {config.epochs} x groups {meta.total_groups} x "
                f"mean puzzle examples {meta.mean_puzzle_examples:g} / global batch {config.global_batch_size})"
                + (f"; stopping at train.max_steps = {stop_at}" if stop_at < total_steps else ""),
                flush=True,
            )
            print(f"device: {self.device}, processes: {self.dist.world_size}", flush=True)

    def evaluate(self) -> None:
        from hrm.training.data import eval_batches
        from hrm.training.step import evaluate

        world_size = self.dist.world_size
        batches = eval_batches(self.test_set, self.plan.micro_batch * world_size, self.dist.rank, world_size)
        self.eval_metrics = evaluate(
            self.state, batches, device=self.device, world_size=world_size, route_task=self.route_task
        )
        self.logger.log_eval(self.state.step, self.eval_metrics)
        self.state.last_eval_step = self.state.step

    def checkpoint(self) -> Path:
        self.saved = self.state.save(self.store, total_steps=self.total_steps, history=self.logger.history())
        return self.saved

    def resume(self, params: dict[str, Any]) -> Any:
        """Open the run's checkpoint store and load its newest checkpoint into the state, if any; that
        checkpoint's dvclive history on rank 0 (None: starting from scratch, or another rank)."""
        from hrm.training.checkpoint import CheckpointStore, fingerprint

        root, rank = Path(self.paths["hrm"]), self.dist.rank
        data_texts = {
            split: (root / split / "dataset.json").read_text(encoding="utf-8") for split in ("train", "test")
        }
        run_fingerprint = fingerprint(section(params, "arch"), section(params, "train"), data_texts)
        self.store = CheckpointStore(self.paths["checkpoints"], run_fingerprint, rank, self.dist.world_size)
        self.store.check_shared()  # multi-node: every rank must see rank 0's checkpoints
        self.saved = self.store.latest()
        if self.saved is None:
            if rank == 0:
                print(f"no checkpoint in {self.store.folder}: starting from scratch", flush=True)
            return None
        history = self.state.restore(self.store, self.saved, self.device)["history"]
        if rank == 0:
            print(f"resuming from {self.saved} (step {self.state.step})", flush=True)
        return history if rank == 0 else None


@contextmanager
def prepared_run(params: dict[str, Any]) -> Iterator[Run]:
    """Settings checked and outputs probed before any work, then the process group (torchrun: nccl on CUDA, else
    gloo) for the block and in it the `Run`: data, plan, state, resume."""
    from hrm.runtime import resolve_device, set_cpu_threads, set_determinism

    dist_info = distributed_from_env()
    train_rules(params, DEFAULT_PARAMS, dist_info.world_size)  # eval_interval | epochs, the batch split, ...
    config = TrainConfig.from_params(section(params, "train"))
    paths = section(params, "paths")
    configured_micro = fixed_micro_batch(config)
    check_output_paths(paths, dist_info.rank)
    device = resolve_device(config.device, dist_info.local_rank)
    set_cpu_threads(config.threads)
    set_determinism(config.deterministic, device)
    import torch.distributed as dist

    if dist_info.world_size > 1 and device.type == "mps":
        raise UserError("torchrun on Apple GPUs is not supported (no collective backend); use one process")
    if dist_info.world_size > 1:
        if device.type == "cuda":  # bound to this rank's GPU at once: NCCL sets up its communicator eagerly
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    try:
        yield Run(params, config, dist_info, device, configured_micro)
    finally:
        if dist_info.world_size > 1:
            dist.destroy_process_group()
