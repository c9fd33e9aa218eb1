"""The offline HTML report: one self-contained file, images inlined as base64, plain tables, no scripts.

It must open from a USB stick on a machine with no network, so it references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from hrm.evaluation.plots import TOKEN_LEGEND

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

COLUMNS = (
    ("exact_accuracy", "exact"),
    ("accuracy", "token acc."),
    ("route_valid_rate", "route valid"),
    ("route_optimal_rate", "route optimal"),
    ("route_cost_gap", "cost gap (valid)"),
    ("q_halt_accuracy", "q_halt acc."),
    ("steps", "ACT steps (Q-head)"),
)


def fmt(value: Any, name: str = "") -> str:
    if value is None:
        return "&ndash;"
    if name == "steps":
        return f"{value:.2f}"
    if name == "count":
        return str(value)
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    return html.escape(str(value))


def table(header: list[str], rows: list[tuple[str, list[str], bool]]) -> str:
    """rows: (first cell, other cells already formatted, is a reference row)."""
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for first, cells, reference in rows:
        css = ' class="ref"' if reference else ""
        out.append(
            f"<tr{css}><td>{html.escape(first)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    return "\n".join(out) + "</table>"


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def summary_table(results: dict[str, dict[str, Any]], halt_max_steps: int) -> str:
    columns = [c for c in COLUMNS if any(c[0] in m for m in results.values())]
    header = ["split / row", "examples"] + [label for _, label in columns]
    rows = []
    for split, metrics in results.items():
        n = fmt(metrics["count"], "count")
        fixed = {**metrics, "steps": float(halt_max_steps)}  # HRM's eval: every row runs them all
        rows.append(
            (
                f"{split}: model, {halt_max_steps} segments",
                [n] + [fmt(fixed.get(k), k) for k, _ in columns],
                False,
            )
        )
        q_halt = dict(metrics["q_halt"])
        q_halt["steps"] = metrics["steps"]
        rows.append(
            (f"{split}: model, Q-head halting", [n] + [fmt(q_halt.get(k), k) for k, _ in columns], False)
        )
        for part, label in (("detour", "needs a detour"), ("monotone", "monotone optimum")):
            if part in metrics:
                values = {**metrics[part], "steps": float(halt_max_steps)}
                rows.append(
                    (
                        f"{split}: model, {label}",
                        [fmt(values["count"], "count")] + [fmt(values.get(k), k) for k, _ in columns],
                        False,
                    )
                )
        rows.append(
            (
                f"{split}: copy the input (baseline)",
                [n] + [fmt(metrics["copy_input"].get(k), k) for k, _ in columns],
                True,
            )
        )
        for key, label in (
            ("monotone_path", "best monotone path (baseline)"),
            ("vehicle_blind", "the car's route for every vehicle (baseline)"),
        ):
            if key in metrics:
                rows.append(
                    (f"{split}: {label}", [n] + [fmt(metrics[key].get(k), k) for k, _ in columns], True)
                )
        if "labels" in metrics:
            rows.append(
                (
                    f"{split}: the labels (data check)",
                    [n] + [fmt(metrics["labels"].get(k), k) for k, _ in columns],
                    True,
                )
            )
    return table(header, rows)


def vehicle_table(metrics: dict[str, Any], vehicles: list[str]) -> str:
    columns = [c for c in COLUMNS if c[0] in metrics]
    header = ["vehicle", "examples"] + [label for _, label in columns]
    rows = [
        (v, [fmt(metrics[v]["count"], "count")] + [fmt(metrics[v].get(k), k) for k, _ in columns], False)
        for v in vehicles
    ]
    return table(header, rows)


def segments_table(results: dict[str, dict[str, Any]]) -> str:
    counts = sorted({int(k) for m in results.values() for k in m["segments"]})
    header = ["segments"]
    for split, metrics in results.items():
        header.append(f"{split} exact")
        if "route_optimal_rate" in metrics:
            header.append(f"{split} route optimal")
    rows = []
    for k in counts:
        cells = []
        for metrics in results.values():
            values = metrics["segments"].get(str(k), {})
            cells.append(fmt(values.get("exact_accuracy")))
            if "route_optimal_rate" in metrics:
                cells.append(fmt(values.get("route_optimal_rate")))
        rows.append((str(k), cells, False))
    return table(header, rows)


def render_report(
    *,
    results: dict[str, dict[str, Any]],
    vehicles: dict[str, list[str]],
    figures: dict[str, Path],
    route_maps: list[tuple[Path, str]],
    context: dict[str, str],
    halt_max_steps: int,
    has_routes: bool,
) -> str:
    """The whole page as one string. `figures` maps a section name to a PNG; missing ones are left out."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>HRM city routing: evaluation</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>HRM city routing: evaluation report</h1>",
        table(["setting", "value"], [(k, [html.escape(v)], False) for k, v in context.items()]),
        "<h2>Summary</h2>",
        summary_table(results, halt_max_steps),
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
        "vehicle</b>: what ignoring the vehicle identifier would score.</p>",
    ]
    if not has_routes:
        parts.append(
            '<p class="note">This data carries no route cost model (routing.json): route metrics skipped.</p>'
        )
    parts.append("<h2>Accuracy vs ACT segments</h2>")
    parts.append(segments_table(results))
    if "segments" in figures:
        parts.append(image(figures["segments"], "accuracy vs segments"))
    if "act_steps" in figures:
        parts.append("<h2>ACT steps chosen by the Q-head</h2>")
        parts.append(image(figures["act_steps"], "ACT steps histogram"))
    for split, names in vehicles.items():
        if names:
            parts.append(f"<h2>Per vehicle: {html.escape(split)}</h2>")
            parts.append(vehicle_table(results[split], names))
            if f"vehicles_{split}" in figures:
                parts.append(image(figures[f"vehicles_{split}"], f"per vehicle {split}"))
    parts.append("<h2>Training curves</h2>")
    if "training" in figures:
        parts.append(image(figures["training"], "training curves"))
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
            parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(image(path, caption))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
