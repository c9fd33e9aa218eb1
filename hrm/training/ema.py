"""Exponential moving average of the weights (TRM's recipe: `train.ema`, `train.ema_rate`).

After every optimizer step each trainable parameter's shadow moves: `shadow = (1 - rate) * param + rate *
shadow` (TRM's models/ema.py). Evaluation and `models/hrm.pt` use the shadows, swapped into the module in
place (a `torch.compile` wrapper sees them too) and back exactly; checkpoints keep raw weights and shadows.
As in TRM, buffers (the sign-SGD puzzle-embedding table among them) are not averaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hrm.config import ConfigError


class WeightEMA:
    """Shadow copies of a module's trainable parameters, keyed by parameter name."""

    def __init__(self, module: Any, rate: float):
        import torch

        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < float(rate) < 1.0:
            raise ConfigError(
                f"params.yaml: train.ema_rate must be a number in (0, 1), e.g. 0.999, got {rate!r}"
            )
        self.rate = float(rate)
        with torch.no_grad():
            self.shadow: dict[str, Any] = {
                name: param.detach().clone()
                for name, param in module.named_parameters()
                if param.requires_grad
            }

    def _pairs(self, module: Any) -> Iterator[tuple[str, Any, Any]]:
        params = dict(module.named_parameters())
        for name, shadow in self.shadow.items():
            yield name, params[name], shadow

    def update(self, module: Any) -> None:
        """One step of the average; call after every optimizer step."""
        import torch

        with torch.no_grad():
            for _, param, shadow in self._pairs(module):
                shadow.mul_(self.rate).add_(param.detach(), alpha=1.0 - self.rate)

    @contextmanager
    def applied(self, module: Any) -> Iterator[None]:
        """Inside the block the module holds the shadow weights; the raw ones come back bit for bit."""
        import torch

        with torch.no_grad():
            raw = {name: param.detach().clone() for name, param, _ in self._pairs(module)}
            for _, param, shadow in self._pairs(module):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param, _ in self._pairs(module):
                    param.copy_(raw[name])

    def state_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        from hrm.io import UserError

        shadow = state.get("shadow", {})
        if state.get("rate") != self.rate or set(shadow) != set(self.shadow):
            raise UserError(
                f"{source}: its EMA state (rate {state.get('rate')}, {len(shadow)} tensors) does not fit this "
                f"run (train.ema_rate {self.rate}, {len(self.shadow)} parameters)"
            )
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)
