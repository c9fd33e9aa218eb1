"""DVC plot data (JSON lists of flat rows: `dvc plots diff` compares runs) and the PNGs of the same numbers for
the offline report: accuracy vs segments, per vehicle, ACT steps, training curves, route maps. matplotlib on Agg,
PNGs without version metadata: the same numbers give the same bytes. hrm compare draws with these helpers too.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import colours, spec
from hrm.evaluation.metrics import EXACT, Q_HALT, ROUTE_OPTIMAL, ROUTE_VALID, STEPS, TOKEN

PNG_METADATA = {"Software": None}
CURVE_ORDER = ("lm_loss", TOKEN, EXACT, Q_HALT, STEPS, "q_halt_loss")  # the trainer's evals (dvclive)
SEGMENT_METRICS = (EXACT, ROUTE_OPTIMAL)  # against the segments run
VEHICLE_METRICS = (EXACT, TOKEN, ROUTE_VALID, ROUTE_OPTIMAL)  # per vehicle (the bars: all but token)


def segment_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per segment count, columns `<split>_<metric>`: DVC draws one line per column."""
    rows = []
    for k in sorted({int(k) for metrics in results.values() for k in metrics["segments"]}):
        row: dict[str, Any] = {"segments": k}
        for split, metrics in results.items():
            values = metrics["segments"].get(str(k), {})
            row.update({f"{split}_{n}": values[n] for n in SEGMENT_METRICS if values.get(n) is not None})
        rows.append(row)
    return rows


def vehicle_rows(metrics: dict[str, Any], vehicles: list[str]) -> list[dict[str, Any]]:
    return [
        {"vehicle": v, **{n: metrics[v][n] for n in VEHICLE_METRICS if metrics[v].get(n) is not None}}
        for v in vehicles
    ]


def act_step_rows(halt_steps: dict[str, np.ndarray], halt_max_steps: int) -> list[dict[str, Any]]:
    """Histogram of the segment where the Q-head halts, one row per step count, one column per split."""
    return [
        {"steps": step, **{split: int((steps == step).sum()) for split, steps in halt_steps.items()}}
        for step in range(1, halt_max_steps + 1)
    ]


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
    for split, marker in (("test", "o"), ("train", "s")):
        for name, style in zip(SEGMENT_METRICS, ("-", "--"), strict=True):
            column = f"{split}_{name}"
            if any(column in row for row in rows):
                ax.plot(x, [row.get(column) for row in rows], style, marker=marker, label=f"{split} {name}")
        point = q_halt.get(split)
        if point:
            ax.plot([point[STEPS]], [point[EXACT]], "*", markersize=14, label=f"{split} Q-halt exact")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("ACT segments run")
    ax.set_ylabel("rate")
    ax.set_title("Accuracy vs ACT segments (stars: Q-head halting at its mean steps)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def _bars(positions: np.ndarray, series: list[tuple[str, Any]], ticks: list[str], title: str, ylabel: str):
    """A figure of grouped bars, one colour per series, the ticks under the middle of each group."""
    plt, fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series):
        ax.bar(positions + i * width, values, width, label=label)
    ax.set_xticks(positions + width * (len(series) - 1) / 2, ticks)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return plt, fig, ax


def plot_vehicles(rows: list[dict[str, Any]], split: str, path: Path) -> None:
    names = [n for n in VEHICLE_METRICS if n != TOKEN]
    series = [(n, [row.get(n, 0.0) for row in rows]) for n in names if any(n in row for row in rows)]
    ticks = [row["vehicle"] for row in rows]
    plt, fig, ax = _bars(np.arange(len(rows)), series, ticks, f"Per vehicle ({split})", "rate")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    save_figure(plt, fig, path)


def plot_act_steps(rows: list[dict[str, Any]], path: Path) -> None:
    steps = np.array([row["steps"] for row in rows])
    counts = {key: np.array([row[key] for row in rows], dtype=float) for key in rows[0] if key != "steps"}
    series = [(split, c / max(c.sum(), 1)) for split, c in counts.items()]
    title = "ACT steps chosen by the Q-head"
    plt, fig, ax = _bars(steps, series, [str(s) for s in steps], title, "fraction of examples")
    ax.set_xlabel("first segment where the Q-head says halt (halt_max_steps if never)")
    save_figure(plt, fig, path)


def tsv_points(text: str, column: str, step: type = int) -> list[tuple[Any, float]]:
    """A dvclive TSV (step, value, ...) -> [(step, value)]; rows that do not parse (a partial last line of a
    run still being written) are skipped."""
    points = []
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        try:
            points.append((step(row["step"]), float(row[column])))
        except (KeyError, TypeError, ValueError):
            continue
    return points


def read_dvclive_curves(log_dir: Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """{metric: {group: (steps, values)}} from dvclive's plots/metrics/<group>/<metric>.tsv files."""
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    root = log_dir / "plots" / "metrics"
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        group = path.parent.relative_to(root).as_posix()
        points = tsv_points(path.read_text(encoding="utf-8"), path.stem, float)
        if points:
            steps, values = (list(x) for x in zip(*points, strict=True))
            curves.setdefault(path.stem, {})["" if group == "." else group] = (steps, values)
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


def plot_route_map(
    path: Path, title: str, grids: tuple, captions: tuple[str, str], rows: int, cols: int
) -> None:
    """Three panels of flat grids (input, label, prediction): the map, the label's optimal route, the predicted
    route (cells that differ from the label ringed); `captions`: the label's and the prediction's."""
    palette = colours.token_colours()
    plt, fig = new_figure(11.0, 4.1)
    cells = rows * cols
    inputs, labels, preds = (np.asarray(grid[:cells]) for grid in grids)
    names = ("input map", "optimal route (label)", "predicted")
    for index, (name, grid, caption) in enumerate(
        zip(names, (inputs, labels, preds), ("", *captions), strict=True)
    ):
        ax = fig.add_subplot(1, 3, index + 1)
        tokens = np.clip(np.asarray(grid, dtype=np.int64), 0, spec.VOCAB_SIZE - 1)
        ax.imshow(palette[tokens].reshape(rows, cols, 3), interpolation="nearest")
        # Start and goal are single cells: ring them (about 2 cells wide) so they stand out on any map size.
        ring = (400.0 / max(rows, cols)) ** 2
        for token in (spec.START, spec.GOAL):
            where = np.flatnonzero(inputs == token)
            ax.scatter(where % cols, where // cols, s=ring, facecolors="none", edgecolors="black", lw=1.5)
        wrong = np.flatnonzero(preds != labels) if index == 2 else []
        if len(wrong):
            ax.scatter(wrong % cols, wrong // cols, s=18, facecolors="none", edgecolors="#ff2a00", lw=0.8)
        ax.set_title(f"{name}\n{caption}" if caption else name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    save_figure(plt, fig, path, top=0.93)


def choose_route_examples(optimal: np.ndarray, count: int) -> list[int]:
    """A fixed sample that shows failures: half (rounded up) from the non-optimal predictions, rest optimal;
    seeded, so reruns on the same predictions pick the same scenarios; a short pool is topped up from the other."""
    rng = np.random.default_rng(0)
    failures = np.flatnonzero(~optimal)
    successes = np.flatnonzero(optimal)
    want_fail = min(len(failures), (count + 1) // 2)
    want_ok = min(len(successes), count - want_fail)
    want_fail = min(len(failures), count - want_ok)
    chosen = list(rng.choice(failures, want_fail, replace=False)) if want_fail else []
    chosen += list(rng.choice(successes, want_ok, replace=False)) if want_ok else []
    return sorted(int(i) for i in chosen)
