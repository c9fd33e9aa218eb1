"""`train(params)`: the run loop (its setup: hrm.training.setup), under torchrun too, resumable by itself."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from hrm.io import UserError, atomic_write_bytes


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written; running `train` again resumes from it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def train(params: dict[str, Any]) -> dict[str, Any]:
    """Train as params.yaml says; return a summary (steps done, last eval metrics, checkpoint, model path).
    The checkpoints folder is locked (checkpoint.checkpoints_lock) before anything is read from or written to
    it, and released on every way out, signals included."""
    from hrm.config import section
    from hrm.training.checkpoint import checkpoints_lock
    from hrm.training.setup import check_output_paths, distributed_from_env

    paths, rank = section(params, "paths"), distributed_from_env().rank
    check_output_paths(paths, rank)  # an unwritable folder is named as the setting it comes from
    with checkpoints_lock(paths["checkpoints"], rank):
        return _train_locked(params)


def _train_locked(params: dict[str, Any]) -> dict[str, Any]:
    import torch

    from hrm.training import step as steps
    from hrm.training.memory import oom_message
    from hrm.training.setup import prepared_run

    with prepared_run(params) as run:
        state, sampler, logger = run.state, run.state.sampler, run.logger
        first_step, started = state.step, time.perf_counter()
        try:
            with stop_signals() as received:
                while sampler.iteration < run.iterations and state.step < run.stop_at:
                    batch = sampler.next_batch()
                    if batch is None:  # iteration over: eval, move to the next, checkpoint there
                        run.evaluate()
                        sampler.start_iteration(sampler.iteration + 1)
                        run.checkpoint()
                        continue
                    batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
                    stop = received["signum"] is not None
                    result = steps.train_step(
                        state,
                        batch,
                        schedule=run.schedule,
                        global_batch_size=run.config.global_batch_size,
                        world_size=run.dist.world_size,
                        rank=run.dist.rank,
                        micro_batch_size=run.plan.micro_batch,
                        stop_requested=stop,
                    )
                    logger.log_train(state.step, result.metrics)
                    if result.stop_requested:
                        message = f"stopped at step {state.step}; checkpoint {run.checkpoint()}."
                        signum = received["signum"] or signal.SIGTERM
                        raise TrainingInterrupted(f"{message} Run train again to resume.", signum)
                if state.last_eval_step != state.step:  # stopped by step count inside an iteration
                    run.evaluate()
                    run.checkpoint()
        except steps.TrainingDiverged as err:
            last = f"Last good checkpoint: {run.saved or 'none yet'}."
            raise steps.TrainingDiverged(f"{err} {last}", err.culprit) from None
        except torch.cuda.OutOfMemoryError:
            raise UserError(oom_message(run.plan.micro_batch, run.saved)) from None
        except BaseException as err:
            if not isinstance(err, TrainingInterrupted):
                logger.write(f"run ended abnormally; last good checkpoint: {run.saved}")
            with suppress(UserError):  # a full disk fails the logger's last write too; report the first
                logger.close()
            raise
        finally:
            logger.close()  # idempotent: a no-op after the close above
        return finish(run, time.perf_counter() - started, first_step)


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


def finish(run: Any, elapsed: float, first_step: int) -> dict[str, Any]:
    """Rank 0 writes the weights (the EMA's with train.ema; HRM's key layout, loadable with weights_only) and,
    outside the dvclive folder (timings differ run to run), the wall time of the steps this process did."""
    import torch

    from hrm.io import atomic_write_json

    state, paths = run.state, run.paths
    if run.dist.rank == 0:
        with state.ema.applied(state.module) if state.ema is not None else nullcontext():
            weights = {
                k.removeprefix("_orig_mod."): v.detach().cpu() for k, v in state.module.state_dict().items()
            }
            buffer = io.BytesIO()
            torch.save(weights, buffer)
            atomic_write_bytes(Path(paths["model"]), buffer.getvalue())
        done = state.step - first_step
        if isinstance(paths.get("train_timing"), str):
            timing = {
                "wall_s": round(elapsed, 3),
                "steps": done,
                "steps_per_s": round(done / elapsed, 4) if elapsed > 0 and done else 0.0,
                "resumed_from_step": first_step,
                "processes": run.dist.world_size,
                "device": str(run.device),
                "threads": torch.get_num_threads(),
            }
            atomic_write_json(Path(paths["train_timing"]), timing)
        per_step = f" ({elapsed / done:.3f} s/step)" if done else ""
        print(f"trained {done} steps in {elapsed:.1f} s{per_step}; weights: {paths['model']}", flush=True)
    return {
        "step": state.step,
        "eval": run.eval_metrics,
        "checkpoint": str(run.saved),
        "model": paths["model"],
    }
