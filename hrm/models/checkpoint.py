"""Loading an official HRM/TRM checkpoint (their loss head's state_dict) or ours: every architecture keeps the
official key layout (`model.inner.*`), so one loader serves them all."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from hrm.io import UserError


def load_official_checkpoint(
    head: nn.Module, path_or_state_dict: str | Path | Mapping[str, torch.Tensor]
) -> None:
    """Load a checkpoint file or state_dict into `head`, without torch.compile's `_orig_mod.` prefix; a missing or
    unexpected key or a shape mismatch is a UserError listing them, instead of half a model loaded."""
    source = "state_dict"
    if isinstance(path_or_state_dict, str | Path):
        source = str(path_or_state_dict)
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise UserError(f"{path}: checkpoint file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise UserError(f"{path}: not a readable PyTorch state_dict ({err})") from err
    else:
        state = path_or_state_dict
    if not isinstance(state, Mapping):
        raise UserError(
            f"{source}: expected a state_dict (mapping of names to tensors), got {type(state).__name__}"
        )
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}

    expected = head.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"{source}: checkpoint does not fit the model built from params.yaml arch"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", wrong_shape),
        ):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise UserError("\n".join(lines))
    head.load_state_dict(state, strict=True)
