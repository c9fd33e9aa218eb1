"""The trainer's state: built by `new_state` (for the run and the memory probe alike), saved and restored as
one checkpoint (format: hrm.training.checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm.config import ConfigError

# What `restore` reads: the entries `save` writes, plus the logger's `history` that the run passes to `save`.
COMMON_KEYS = ("model", "optimizers", "sampler", "step", "last_eval_step", "history")
RANK_KEYS = ("carry", "generator", "rng")


@dataclass
class TrainState:
    """What a step reads and changes; `head` may be the compiled wrapper of `module`."""

    head: Any
    module: Any
    optimizers: dict[str, Any]  # by name (`build_optimizers`): "puzzle_emb" (if the model has one), "dense"
    base_lrs: dict[str, float]  # each optimizer's lr before the schedule (hrm.optim.LrSchedule) scales it
    generator: Any  # torch.Generator for the model's own draws (halt exploration)
    step: int = 0
    carry: Any = None
    ema: Any = None  # hrm.training.ema.WeightEMA when train.ema: updated after each step, used to evaluate
    sampler: Any = None  # hrm.training.data.TrainSampler: its position is part of a checkpoint
    last_eval_step: int = -1

    def save(self, store: Any, **common: Any) -> Path:
        """One checkpoint (collective): what the run needs to continue bit for bit, plus `common` entries."""
        from hrm.runtime import rng_states

        shared = {
            "model": self.module.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers.values()],  # a list, in the dict's order
            "sampler": self.sampler.state_dict(),
            "last_eval_step": self.last_eval_step,
            **common,
        }
        if self.ema is not None:
            shared["ema"] = self.ema.state_dict()
        carry = None if self.carry is None else {k: v.cpu() for k, v in self.carry.to_state().items()}
        own = {"carry": carry, "generator": self.generator.get_state(), "rng": rng_states()}
        return store.save(self.step, shared, own)

    def restore(self, store: Any, path: Path, device: Any) -> dict[str, Any]:
        """Load checkpoint folder `path` (written by `save`) into this state; returns its common part, its
        dvclive history checked against the logger's own file names. A checkpoint of an older layout (a key
        missing, a part that does not load) is one `older_version` error, not a traceback."""
        from hrm.models import ACTCarry
        from hrm.runtime import set_rng_states
        from hrm.training.checkpoint import older_version, require_keys
        from hrm.training.logging import check_history

        common, own = store.load(path)
        common_file, own_file = path / "common.pt", path / f"rank{store.rank}.pt"
        require_keys(common, COMMON_KEYS, common_file, store.folder)
        require_keys(own, RANK_KEYS, own_file, store.folder)
        check_history(common["history"], str(common_file))  # before anything is written from it
        file = common_file
        try:
            self.module.load_state_dict(common["model"])
            for optimizer, saved in zip(self.optimizers.values(), common["optimizers"], strict=True):
                optimizer.load_state_dict(saved)
            self.sampler.load_state_dict(common["sampler"])
            if self.ema is not None:
                self.ema.load_state_dict(common.get("ema", {}), source=str(common_file))
            self.step = int(common["step"])
            self.last_eval_step = int(common["last_eval_step"])
            file = own_file
            self.carry = None if own["carry"] is None else ACTCarry.from_state(own["carry"], device=device)
            self.generator.set_state(own["generator"])
            set_rng_states(own["rng"])
        except KeyError as err:  # a nested entry (optimizer, sampler, carry) of an older layout
            raise older_version(file, store.folder, f"missing {err.args[0]!r}") from None
        except (ValueError, RuntimeError, TypeError, IndexError, AttributeError) as err:
            what = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise older_version(file, store.folder, what[:300]) from None
        return common


def new_state(
    arch: dict[str, Any],
    metadata: Any,
    config: Any,
    rows: int,
    device: Any,
    world_size: int = 1,
    compile_model: bool = False,
) -> TrainState:
    """The state for micro-batches of `rows` (`config`: a setup.TrainConfig): the seeded model (broadcast under
    torchrun), both optimizers, the model's own generator, the EMA copy; the probe measures what the run has."""
    import torch

    from hrm.models import build_model
    from hrm.training.ema import WeightEMA

    module = build_model(arch, metadata, rows, device, config.seed)
    set_activation_checkpointing(module, config.activation_checkpointing)
    if world_size > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor, src=0)
    # Halt exploration's draws: a CPU generator (portable state, CUDA draws as CPU), the same seed on every rank
    # (each takes its rows of the global batch's draws: step.train_step; HRM seeds seed + rank instead).
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    optimizers, base_lrs = build_optimizers(module, config)
    head = torch.compile(module, dynamic=False) if compile_model else module
    module.train()
    ema = WeightEMA(module, config.ema_rate) if config.ema else None  # a full copy of the weights
    return TrainState(head, module, optimizers, base_lrs, generator, ema=ema)


def build_optimizers(module: Any, config: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """HRM's pair by name with their base lrs: "puzzle_emb", sign-SGD on the puzzle-embedding table (none without
    one), then "dense", AdamATan2 on every parameter. That order is the checkpoint's and the steps'."""
    from hrm.optim import AdamATan2, SparseSignSGD

    # lr 0 until the schedule sets it before the first step (HRM does the same).
    dense = AdamATan2(
        module.parameters(), lr=0.0, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
    )
    if module.puzzle_emb is None:
        return {"dense": dense}, {"dense": config.lr}
    sparse = SparseSignSGD(module.puzzle_emb, lr=0.0, weight_decay=config.puzzle_emb_weight_decay)
    return {"puzzle_emb": sparse, "dense": dense}, {"puzzle_emb": config.puzzle_emb_lr, "dense": config.lr}


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
