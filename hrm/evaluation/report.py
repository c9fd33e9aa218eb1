"""The offline HTML report: one self-contained file (images inlined as base64, plain tables, no scripts) that
opens from a USB stick on a machine with no network. `table` and `image` serve hrm compare's page too.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hrm.data.colours import TOKEN_LEGEND
from hrm.evaluation.metrics import EXACT, METRICS, STEPS
from hrm.evaluation.plots import SEGMENT_METRICS, segment_rows

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1180px;color:#222;
padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
tr.ref td{color:#666;font-style:italic}
.note{color:#555;font-size:.9em;max-width:60em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #999;vertical-align:middle;margin:0 .3em 0 1em}
code{background:#f5f5f5;padding:0 .2em}
"""

# Every metric of the registry, in its order; the steps column says whose steps they are.
COLUMNS = tuple(
    (name, "ACT steps (Q-head)" if name == STEPS else metric.label) for name, metric in METRICS.items()
)
NOTE = (
    '<p class="note"><b>exact</b>: the whole grid is right. <b>token acc.</b>: share of cells right; copying '
    "the input already scores high because most cells are the map. <b>route valid</b>: the predicted route "
    "cells form one simple path from start to goal over cells the vehicle may enter, with the rest of the map "
    "unchanged. <b>route optimal</b>: valid and as cheap as the shortest path (any optimal route counts, not "
    "only the label's). <b>cost gap</b>: mean (cost / optimum &minus; 1) over valid routes. <b>q_halt acc.</b>: "
    "after the last segment, does q_halt &ge; 0 agree with the grid being exactly right. <b>ACT steps</b>: "
    "mean segment where the Q-head would halt (HRM: first q_halt &gt; q_continue; TRM: q_halt &gt; 0). Italic rows are references: "
    "copying the map is what a model that has learned nothing about routing gets; the labels row checks "
    "the data (it must read 100%). <b>needs a detour</b>: examples where no optimal route is monotone (every "
    "route of Manhattan length costs more or is blocked): they need search; <b>monotone optimum</b>: the rest. "
    "<b>best monotone path</b>: the cheapest route that only moves towards the goal, by dynamic programming; "
    "its route-optimal rate is the share of examples that need no search. <b>the car's route for every "
    "vehicle</b>: what ignoring the vehicle identifier would score.</p>"
)


# The summary's rows beside the model's own: the model on part of a split, and the reference rows (italic).
PARTS = (("detour", "model, needs a detour"), ("monotone", "model, monotone optimum"))
REFERENCES = (
    ("copy_input", "copy the input (baseline)"),
    ("monotone_path", "best monotone path (baseline)"),
    ("vehicle_blind", "the car's route for every vehicle (baseline)"),
    ("labels", "the labels (data check)"),
)


def fmt(value: Any, name: str = "") -> str:
    if value is None:
        return "&ndash;"
    if name == STEPS:
        return f"{value:.2f}"
    if name == "count":
        return str(value)
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    return html.escape(str(value))


def table(header: Sequence[str], rows: Sequence[tuple[Sequence[str], bool]]) -> str:
    """rows: (cells already HTML, is a reference row: shown in italics)."""
    head = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>\n"
    css = {False: "", True: ' class="ref"'}
    body = (f"<tr{css[ref]}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells, ref in rows)
    return head + "\n".join(body) + "</table>"


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _metric_table(first: str, rows: list[tuple[str, dict[str, Any], Any, bool]], present: list[dict]) -> str:
    """rows: (label, metrics, example count, is a reference row); the COLUMNS that some of `present` has."""
    columns = [c for c in COLUMNS if any(c[0] in m for m in present)]
    header = [first, "examples"] + [label for _, label in columns]
    cells = [
        ([html.escape(label), fmt(count, "count")] + [fmt(values.get(k), k) for k, _ in columns], ref)
        for label, values, count, ref in rows
    ]
    return table(header, cells)


def summary_table(results: dict[str, dict[str, Any]], halt_max_steps: int) -> str:
    rows = []
    for split, metrics in results.items():
        n, fixed = metrics["count"], float(halt_max_steps)  # HRM's eval: every row runs them all
        rows.append((f"{split}: model, {halt_max_steps} segments", {**metrics, STEPS: fixed}, n, False))
        q_halt = {**metrics["q_halt"], STEPS: metrics[STEPS]}
        rows.append((f"{split}: model, Q-head halting", q_halt, n, False))
        rows += [
            (f"{split}: {label}", {**metrics[key], STEPS: fixed}, metrics[key]["count"], False)
            for key, label in PARTS
            if key in metrics
        ]
        rows += [(f"{split}: {label}", metrics[key], n, True) for key, label in REFERENCES if key in metrics]
    return _metric_table("split / row", rows, list(results.values()))


def segments_table(results: dict[str, dict[str, Any]]) -> str:
    """plots.segment_rows as a table: exact (and route optimal where scored) per split and segment count."""
    columns = [(s, n) for s, m in results.items() for n in SEGMENT_METRICS if n == EXACT or n in m]
    header = ["segments"] + [f"{split} {METRICS[name].label}" for split, name in columns]
    rows = segment_rows(results)
    return table(
        header,
        [([str(row["segments"])] + [fmt(row.get(f"{s}_{n}")) for s, n in columns], False) for row in rows],
    )


def render_report(
    *,
    results: dict[str, dict[str, Any]],
    vehicles: dict[str, list[str]],
    figure_dir: Path,
    training: bool,
    route_maps: list[tuple[Path, str]],
    context: dict[str, str],
    halt_max_steps: int,
    has_routes: bool,
) -> str:
    """The whole page as one string, the PNGs read from `figure_dir`; `training`: training_curves.png exists."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>HRM city routing: evaluation</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>HRM city routing: evaluation report</h1>",
        table(["setting", "value"], [([html.escape(k), html.escape(v)], False) for k, v in context.items()]),
        "<h2>Summary</h2>",
        summary_table(results, halt_max_steps),
        NOTE,
    ]
    if not has_routes:
        parts.append(
            '<p class="note">This data carries no route cost model (routing.json): route metrics skipped.</p>'
        )
    parts += [
        "<h2>Accuracy vs ACT segments</h2>",
        segments_table(results),
        image(figure_dir / "segments.png", "accuracy vs segments"),
        "<h2>ACT steps chosen by the Q-head</h2>",
        image(figure_dir / "act_steps.png", "ACT steps histogram"),
    ]
    for split, names in vehicles.items():
        if names:
            rows = [(v, results[split][v], results[split][v]["count"], False) for v in names]
            parts += [
                f"<h2>Per vehicle: {html.escape(split)}</h2>",
                _metric_table("vehicle", rows, [results[split]]),
                image(figure_dir / f"vehicles_{split}.png", f"per vehicle {split}"),
            ]
    parts.append("<h2>Training curves</h2>")
    if training:
        parts.append(image(figure_dir / "training_curves.png", "training curves"))
    else:
        parts.append('<p class="note">No dvclive logs found: training curves left out.</p>')
    if route_maps:
        parts.append("<h2>Route maps (test)</h2>")
        legend = "".join(
            f'<span class="swatch" style="background:{colour}"></span>{html.escape(name)}'
            for name, colour in TOKEN_LEGEND
        )
        parts.append(f'<p class="note">{legend}. Red rings: predicted cells that differ from the label.</p>')
        for path, caption in route_maps:
            parts += [f"<h3>{html.escape(caption)}</h3>", image(path, caption)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
