"""Models: HRM ACT v1, TRM and the same-size transformer baseline, each wrapped in `ACTLossHead`.

Import cost: this package imports torch, so import it inside the functions that need a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from hrm.models.act import ACTCarry, ACTModel, QHaltingACT
from hrm.models.checkpoint import load_official_checkpoint
from hrm.models.config import ModelConfig
from hrm.models.hrm import HRMConfig, HRMInner
from hrm.models.losses import ACTLossHead, normalize_metrics
from hrm.models.transformer import TransformerBaseline, TransformerConfig, TransformerInner
from hrm.models.trm import TRMConfig, TRMInner


@dataclass(frozen=True)
class Architecture:
    """What `arch.name` builds: its config, its ACT loop and its inner model of one segment."""

    config: type[ModelConfig]
    act: type[ACTModel]
    inner: type[torch.nn.Module]


# arch.name -> its architecture: a new one is a model file (config and inner model) and a line here; the FLOP
# count follows from its config, the schema's arch.name choices are tested against these keys.
ARCHITECTURES = {
    "hrm_v1": Architecture(HRMConfig, QHaltingACT, HRMInner),
    "trm": Architecture(TRMConfig, QHaltingACT, TRMInner),
    "transformer": Architecture(TransformerConfig, TransformerBaseline, TransformerInner),
}

__all__ = [
    "ACTCarry",
    "ACTLossHead",
    "ARCHITECTURES",
    "Architecture",
    "ModelConfig",
    "build_model",
    "load_official_checkpoint",
    "normalize_metrics",
]


def build_model(
    arch: Mapping[str, Any],
    metadata: Any = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    *,
    seq_len: int | None = None,
    vocab_size: int | None = None,
    num_puzzle_identifiers: int | None = None,
) -> ACTLossHead:
    """The loss head around the architecture `arch["name"]` names, on `device` (None = CPU; "meta" for shape checks).

    `metadata`: the dataset's sizes (anything with seq_len, vocab_size, num_puzzle_identifiers), else the three
    as keywords. `batch_size`: rows per process (the puzzle embedding's gradient buffer). `seed`: initialise
    from it without disturbing the global RNG (None: the global CPU RNG). Weights are drawn on the CPU.
    """
    if metadata is not None:
        seq_len, vocab_size = metadata.seq_len, metadata.vocab_size
        num_puzzle_identifiers = metadata.num_puzzle_identifiers
    if batch_size is None or None in (seq_len, vocab_size, num_puzzle_identifiers):
        raise TypeError("build_model needs batch_size and the dataset's metadata (or its three sizes)")
    config = ModelConfig.from_arch(  # arch.name checked here
        arch,
        seq_len=seq_len,
        vocab_size=vocab_size,
        num_puzzle_identifiers=num_puzzle_identifiers,
        batch_size=batch_size,
        device=device,
    )
    loss_type = str(arch.get("loss", "stablemax_cross_entropy"))
    target = torch.device(device) if device is not None else torch.device("cpu")
    architecture = ARCHITECTURES[arch.get("name", "hrm_v1")]
    act, inner = architecture.act, architecture.inner
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA RNG states stay untouched
        if target.type == "meta":  # shapes only: allocates nothing
            with target:
                return ACTLossHead(act(config, inner(config)), loss_type)
        # Initialise on the CPU, then move: the same seed gives the same weights on every device.
        return ACTLossHead(act(config, inner(config)), loss_type).to(target)
