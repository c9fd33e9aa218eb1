"""dvclive metrics (rank 0 only) and the progress bar. On resume the logger's files are rebuilt from the
checkpoint's history, so a resumed run's files equal an uninterrupted run's. A checkpoint is data, not code: its
history may name only the files this logger writes (`logged_files`), and nothing else in the folder is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hrm.evaluation.metrics import HEAD_METRICS, SUMMED_ROUTE_METRICS
from hrm.io import UserError, atomic_write_text, output_path, writing

# count: rows that halted this step, i.e. new examples started next step (budget curves' samples seen)
TRAIN_METRICS = (*HEAD_METRICS, "lr")
EVAL_METRICS = (
    *HEAD_METRICS[1:-1],
    *SUMMED_ROUTE_METRICS,
)  # no q_continue_loss in eval; routes with routing.json
PREFIXED_METRICS = {"train": TRAIN_METRICS, "eval": EVAL_METRICS}


def logged_files() -> frozenset[str]:
    """Every file dvclive writes for this logger (relative posix paths): the allow-list of a restored history."""
    plots = {
        f"plots/metrics/{prefix}/{name}.tsv" for prefix, names in PREFIXED_METRICS.items() for name in names
    }
    return frozenset({"metrics.json", *plots})


def check_history(history: Any, source: str) -> dict[str, str]:
    """A checkpoint's dvclive history, refused (UserError naming `source` and the entry) unless it maps files
    this logger writes to their text: the file names come from `logged_files`, never from the checkpoint."""
    if not isinstance(history, dict):
        raise UserError(f"{source}: 'history' is a {type(history).__name__}, not the logger's files")
    allowed = logged_files()
    for name, text in history.items():
        if name not in allowed:
            raise UserError(
                f"{source}: history entry {name!r} is not a file this trainer's logger writes; refusing to "
                "write it (the checkpoint was not written by this code, or was altered)"
            )
        if not isinstance(text, str):
            raise UserError(f"{source}: history entry {name!r} is a {type(text).__name__}, not text")
    return history


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

    def _log(self, step: int, prefix: str, metrics: dict[str, float]) -> None:
        self.live.step = step
        with writing(self.log_dir):
            for name in PREFIXED_METRICS[prefix]:
                if name in metrics:
                    self.live.log_metric(f"{prefix}/{name}", float(metrics[name]))
            self.live.make_summary()

    def log_train(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._log(step, "train", metrics)
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
        self._log(step, "eval", metrics)
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in EVAL_METRICS if k in metrics)
        self.bar.write(f"eval at step {step}: {shown}")

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def history(self) -> dict[str, str] | None:
        """The logger's files (`logged_files`: metrics.json, plots TSVs), relative path -> text, for the checkpoint."""
        if not self.enabled:
            return None
        with writing(self.log_dir):
            self.live.make_summary()
        files = {name: self.log_dir / name for name in sorted(logged_files())}
        return {name: path.read_text(encoding="utf-8") for name, path in files.items() if path.is_file()}

    def close(self) -> None:
        """Idempotent: called on normal ends and on errors alike."""
        if not self.enabled or self.live is None:
            return
        self.bar.close()
        live, self.live = self.live, None
        with writing(self.log_dir):
            live.make_summary()
            live.end()


def restore_history(log_dir: Path, history: dict[str, str]) -> None:
    """Make the logger's files in `log_dir` exactly the checkpoint's snapshot (`check_history`ed by the loader);
    other files in the folder are left alone. Every write resolves inside `log_dir` (`output_path`)."""
    allowed = logged_files()
    with writing(log_dir):
        for name in sorted(allowed - history.keys()):  # rows logged after the checkpoint, in files it lacks
            output_path(log_dir, name, "dvclive history").unlink(missing_ok=True)
        for name, text in history.items():
            if name not in allowed:  # check_history refused it on load; this guards any other caller
                raise UserError(f"dvclive history entry {name!r} is not a file the logger writes")
            atomic_write_text(output_path(log_dir, name, "dvclive history"), text)
