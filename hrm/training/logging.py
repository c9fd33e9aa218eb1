"""dvclive metrics (rank 0 only) and the progress bar. On resume the dvclive folder is rebuilt from the
checkpoint's history, so a resumed run's files equal an uninterrupted run's."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hrm.training.step import METRIC_KEYS, ROUTE_KEYS

# count: rows that halted this step, i.e. new examples started next step (budget curves' samples seen)
TRAIN_METRICS = (*METRIC_KEYS, "lr")
EVAL_METRICS = (*METRIC_KEYS[1:-1], *ROUTE_KEYS)  # no q_continue_loss in eval; routes with routing.json


class RunLogger:
    """dvclive + tqdm on rank 0; a silent no-op elsewhere."""

    def __init__(
        self,
        log_dir: str | Path,
        enabled: bool,
        total_steps: int,
        initial_step: int = 0,
        history: dict[str, str] | None = None,
    ):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.live: Any = None
        self.bar: Any = None
        self.last_exact: float | None = None
        if not enabled:
            return
        from dvclive import Live
        from tqdm import tqdm

        if history is not None:
            restore_history(self.log_dir, history)
        self.live = Live(dir=str(self.log_dir), save_dvc_exp=False, dvcyaml=None, resume=history is not None)
        self.bar = tqdm(
            total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True
        )

    def _log(self, step: int, prefix: str, names: tuple[str, ...], metrics: dict[str, float]) -> None:
        self.live.step = step
        for name in names:
            if name in metrics:
                self.live.log_metric(f"{prefix}/{name}", float(metrics[name]))
        self.live.make_summary()

    def log_train(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._log(step, "train", TRAIN_METRICS, metrics)
        if "exact_accuracy" in metrics:
            self.last_exact = metrics["exact_accuracy"]
        postfix = {"loss": f"{metrics['loss']:.4f}"}
        if self.last_exact is not None:
            postfix["exact"] = f"{self.last_exact:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._log(step, "eval", EVAL_METRICS, metrics)
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in EVAL_METRICS if k in metrics)
        self.bar.write(f"eval at step {step}: {shown}")

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def history(self) -> dict[str, str] | None:
        """Every file dvclive wrote (metrics.json, plots TSVs), relative path -> text, for the checkpoint."""
        if not self.enabled:
            return None
        self.live.make_summary()
        return {
            path.relative_to(self.log_dir).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(self.log_dir.rglob("*"))
            if path.is_file()
        }

    def close(self) -> None:
        """Idempotent: called on normal ends and on errors alike."""
        if not self.enabled or self.live is None:
            return
        self.bar.close()
        self.live.make_summary()
        self.live.end()
        self.live = None


def restore_history(log_dir: Path, history: dict[str, str]) -> None:
    """Make `log_dir` hold exactly the files of the checkpoint's snapshot."""
    if log_dir.exists():
        shutil.rmtree(log_dir)
    for relative, text in history.items():
        target = log_dir / relative
        if ".." in Path(relative).parts:
            raise ValueError(f"bad path in dvclive history: {relative}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
