"""The evaluation loop, one for the trainer's periodic evals and the evaluate stage: every batch through the ACT
head in eval mode for a fixed number of segments. HRM's eval never stops a row early (`eval_segments`: its
halt_max_steps, 1 for the transformer), so every row halts at the last segment together; what each segment
predicted is handed back, and each caller reduces it its own way (the trainer: the loss head's sums of the
last segment; the stage: predictions after each segment and the Q-head's would-be halting).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

# What the head returns beside its metric sums: the stage reads all three, the trainer the predictions.
PREDICTION_KEYS = ["preds", "q_halt_logits", "q_continue_logits"]


def run_batches(
    head: Any, batches: Iterable[dict[str, Any]], segments: int, device: Any
) -> Iterator[tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]]:
    """Per batch (moved to `device`): the batch and each segment's (metric sums, outputs), without gradients.
    The caller puts the head in eval mode. A head that halts before `segments` or not at it is a bug."""
    import torch

    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        passes = []
        with torch.inference_mode():
            carry = head.initial_carry(batch)
            for step in range(1, segments + 1):
                carry, _, metrics, outputs, all_halted = head(
                    carry=carry, batch=batch, return_keys=PREDICTION_KEYS
                )
                if "preds" not in outputs:
                    raise RuntimeError("model outputs lack 'preds'; the ACT head must return them")
                if bool(all_halted) != (step == segments):
                    raise RuntimeError(
                        f"model reported all_halted={bool(all_halted)} after segment {step} of "
                        f"{segments}; in eval mode HRM halts exactly at halt_max_steps"
                    )
                passes.append((metrics, outputs))
        yield batch, passes
