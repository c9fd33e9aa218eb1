"""DVC plot data and PNG figures: accuracy vs segments, per-vehicle bars, ACT steps, training curves, route maps.

Plot data is written as JSON lists of flat rows (DVC `plots:` reads them and `dvc plots diff` compares runs);
the PNGs show the same numbers for the offline report. matplotlib runs on the Agg backend (no display) and
PNGs carry no version metadata, so the same numbers give the same bytes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import colours, spec

PNG_METADATA = {"Software": None}
CURVE_ORDER = ("lm_loss", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "q_halt_loss")


def segment_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per segment count, columns `<split>_<metric>`: DVC draws one line per column."""
    counts = sorted({int(k) for metrics in results.values() for k in metrics["segments"]})
    rows = []
    for k in counts:
        row: dict[str, Any] = {"segments": k}
        for split, metrics in results.items():
            values = metrics["segments"].get(str(k), {})
            for name in ("exact_accuracy", "route_optimal_rate"):
                if values.get(name) is not None:
                    row[f"{split}_{name}"] = values[name]
        rows.append(row)
    return rows


def vehicle_rows(metrics: dict[str, Any], vehicles: list[str]) -> list[dict[str, Any]]:
    rows = []
    for key in vehicles:
        values = metrics[key]
        row = {"vehicle": key}
        for name in ("exact_accuracy", "accuracy", "route_valid_rate", "route_optimal_rate"):
            if values.get(name) is not None:
                row[name] = values[name]
        rows.append(row)
    return rows


def act_step_rows(halt_steps: dict[str, np.ndarray], halt_max_steps: int) -> list[dict[str, Any]]:
    """Histogram of the segment where the Q-head halts, one row per step count, one column per split."""
    rows = []
    for step in range(1, halt_max_steps + 1):
        row: dict[str, Any] = {"steps": step}
        for split, steps in halt_steps.items():
            row[split] = int((steps == step).sum())
        rows.append(row)
    return rows


def new_figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def save_figure(plt: Any, fig: Any, path: Path, top: float = 1.0) -> None:
    fig.tight_layout(rect=(0, 0, 1, top))  # `top` < 1 leaves room for a suptitle
    fig.savefig(path, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def plot_segments(rows: list[dict[str, Any]], q_halt: dict[str, dict[str, Any]], path: Path) -> None:
    plt, fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    x = [row["segments"] for row in rows]
    styles = {"exact_accuracy": "-", "route_optimal_rate": "--"}
    for split, marker in (("test", "o"), ("train", "s")):
        for name, style in styles.items():
            column = f"{split}_{name}"
            if any(column in row for row in rows):
                ax.plot(x, [row.get(column) for row in rows], style, marker=marker, label=f"{split} {name}")
        point = q_halt.get(split)
        if point:
            ax.plot(
                [point["steps"]], [point["exact_accuracy"]], "*", markersize=14, label=f"{split} Q-halt exact"
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("ACT segments run")
    ax.set_ylabel("rate")
    ax.set_title("Accuracy vs ACT segments (stars: Q-head halting at its mean steps)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def plot_vehicles(rows: list[dict[str, Any]], split: str, path: Path) -> None:
    plt, fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    names = ["exact_accuracy", "route_valid_rate", "route_optimal_rate"]
    names = [n for n in names if any(n in row for row in rows)]
    width = 0.8 / max(len(names), 1)
    positions = np.arange(len(rows))
    for i, name in enumerate(names):
        ax.bar(positions + i * width, [row.get(name, 0.0) for row in rows], width, label=name)
    ax.set_xticks(positions + width * (len(names) - 1) / 2, [row["vehicle"] for row in rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate")
    ax.set_title(f"Per vehicle ({split})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def plot_act_steps(rows: list[dict[str, Any]], path: Path) -> None:
    plt, fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    splits = [key for key in rows[0] if key != "steps"]
    steps = np.array([row["steps"] for row in rows])
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        counts = np.array([row[split] for row in rows], dtype=float)
        ax.bar(steps + i * width, counts / max(counts.sum(), 1), width, label=split)
    ax.set_xticks(steps + width * (len(splits) - 1) / 2, [str(s) for s in steps])
    ax.set_xlabel("first segment where the Q-head says halt (halt_max_steps if never)")
    ax.set_ylabel("fraction of examples")
    ax.set_title("ACT steps chosen by the Q-head")
    ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def read_dvclive_curves(log_dir: Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """{metric: {group: (steps, values)}} from dvclive's plots/metrics/<group>/<metric>.tsv files."""
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    root = log_dir / "plots" / "metrics"
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        group = path.parent.relative_to(root).as_posix()
        group = "" if group == "." else group
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            column = path.stem
            steps, values = [], []
            for row in reader:
                try:
                    steps.append(float(row["step"]))
                    values.append(float(row[column]))
                except (KeyError, TypeError, ValueError):
                    continue  # a partial last line of a run still being written
        if steps:
            curves.setdefault(path.stem, {})[group] = (steps, values)
    return curves


def plot_training_curves(log_dir: Path, path: Path) -> bool:
    """One panel per metric, train and eval on the same axes; False (nothing drawn) without dvclive logs."""
    curves = read_dvclive_curves(log_dir)
    if not curves:
        return False
    names = [n for n in CURVE_ORDER if n in curves] + sorted(n for n in curves if n not in CURVE_ORDER)
    names = names[:9]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    plt, fig = new_figure(4.0 * cols, 2.8 * rows)
    for index, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, index + 1)
        for group, (steps, values) in sorted(curves[name].items()):
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=group or name)
        if name.endswith("loss") and all(v > 0 for _, vals in curves[name].values() for v in vals):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(plt, fig, path)
    return True


# ---- route maps ----

# Token colours: hrm.data.colours, shared with validate's scenarios.png (TOKEN_LEGEND is shown by report.py).
TOKEN_LEGEND = colours.TOKEN_LEGEND


@dataclass
class RouteMapExample:
    title: str
    input_grid: np.ndarray  # flat [rows*cols]
    label_grid: np.ndarray
    pred_grid: np.ndarray
    caption_label: str
    caption_pred: str


def plot_route_map(example: RouteMapExample, rows: int, cols: int, path: Path) -> None:
    """Three panels: the map, the label's optimal route, the predicted route (wrong cells ringed)."""
    palette = colours.token_colours()
    plt, fig = new_figure(11.0, 4.1)
    cells = rows * cols
    panels = (
        ("input map", example.input_grid, ""),
        ("optimal route (label)", example.label_grid, example.caption_label),
        ("predicted", example.pred_grid, example.caption_pred),
    )
    for index, (name, grid, caption) in enumerate(panels):
        ax = fig.add_subplot(1, 3, index + 1)
        tokens = np.clip(np.asarray(grid[:cells], dtype=np.int64), 0, spec.VOCAB_SIZE - 1)
        ax.imshow(palette[tokens].reshape(rows, cols, 3), interpolation="nearest")
        # Start and goal are single cells: ring them (about 2 cells wide) so they stand out on any map size.
        ring = (400.0 / max(rows, cols)) ** 2
        for token in (spec.START, spec.GOAL):
            where = np.flatnonzero(np.asarray(example.input_grid[:cells]) == token)
            ax.scatter(where % cols, where // cols, s=ring, facecolors="none", edgecolors="black", lw=1.5)
        if index == 2:
            wrong = np.flatnonzero(
                np.asarray(example.pred_grid[:cells]) != np.asarray(example.label_grid[:cells])
            )
            if wrong.size:
                ax.scatter(wrong % cols, wrong // cols, s=18, facecolors="none", edgecolors="#ff2a00", lw=0.8)
        ax.set_title(f"{name}\n{caption}" if caption else name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(example.title, fontsize=10)
    save_figure(plt, fig, path, top=0.93)


def choose_route_examples(optimal: np.ndarray, count: int, seed: int = 0) -> list[int]:
    """A fixed sample that shows failures: half (rounded up) from the non-optimal predictions, rest optimal.

    Seeded so reruns on the same predictions pick the same scenarios; a short pool is topped up from the other.
    """
    rng = np.random.default_rng(seed)
    failures = np.flatnonzero(~optimal)
    successes = np.flatnonzero(optimal)
    want_fail = min(len(failures), (count + 1) // 2)
    want_ok = min(len(successes), count - want_fail)
    want_fail = min(len(failures), count - want_ok)
    chosen = list(rng.choice(failures, want_fail, replace=False)) if want_fail else []
    chosen += list(rng.choice(successes, want_ok, replace=False)) if want_ok else []
    return sorted(int(i) for i in chosen)
