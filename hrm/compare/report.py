"""The report of a comparison: one list of blocks rendered twice (results.md, index.html), the bar and budget
figures, and the report folder that holds them."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from hrm.budget import plot_budget
from hrm.compare.stats import METRICS, RATES, TIMING
from hrm.evaluation import metrics as M
from hrm.io import atomic_write_json, atomic_write_text, staged_directory


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key in RATES:
        return f"{100 * value:.1f}%"
    return f"{value:.0f}" if key == "wall_s" else f"{value:.2f}"


def _mean_sd(stat: dict[str, Any], key: str, spread: bool = False) -> str:
    """mean ± sd, and with `spread` [min, max] where there is more than one value."""
    if not stat["n"]:
        return "-"
    text = _fmt(stat["mean"], key)
    if stat["sd"] is not None:
        text += " ± " + _fmt(stat["sd"], key).rstrip("%") + ("%" if key in RATES else "")
    if spread and stat["n"] > 1:
        text += f" [{_fmt(stat['min'], key)}, {_fmt(stat['max'], key)}]"
    return text


def _compute(point: dict[str, Any] | None) -> str:
    """A point of a budget curve as its step and compute."""
    if point is None:
        return "not reached"
    samples = "-" if point["samples"] is None else f"{point['samples']:,.0f}"
    return f"step {point['step']:,.0f}: {samples} samples, {point['segments']:,.0f} segments, {point['flops']:.2e} FLOPs"


def budget_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    groups = [g for g in results["groups"] if g.get("budget", {}).get("last")]
    levels = list(groups[0]["budget"]["reach"]) if groups else []
    header = ["variant", "arch", "n", "evals", "end of the runs", "route optimal at the end"]
    header += [f"first >= {name}" for name in levels]
    rows = []
    for group in groups:
        budget = group["budget"]
        last = budget["last"]
        sd = last.get(f"{M.ROUTE_OPTIMAL}_sd")
        end_rate = _fmt(last[M.ROUTE_OPTIMAL], M.ROUTE_OPTIMAL)
        end_rate += "" if sd is None else f" ± {100 * sd:.1f}%"
        cells = [group["variant"], group["arch"], str(group["n"]), str(len(budget["curve"])), _compute(last)]
        cells.append(end_rate)
        for name in levels:
            reach = budget["reach"][name]
            seeds = ", ".join("-" if p is None else f"{p['step']:,}" for p in reach["seeds"])
            cells.append(f"{_compute(reach['mean'])} (mean curve; per seed step: {seeds})")
        rows.append(cells)
    return header, rows


def report_blocks(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report as blocks, ("h1"|"h2"|"p", text) or ("table", (header, rows)): results.md and index.html are
    two renderings of this one list."""
    keys, route = [*METRICS, *TIMING], M.ROUTE_OPTIMAL
    seeds = (
        f"{results['seeds']} seed(s) per arch{' (data seeds varied too)' if results['data_seeds'] else ''}"
    )
    blocks: list[tuple[str, Any]] = [
        ("h1", f"hrm compare: {results['name']}"),
        ("p", f"Command: `{results['command']}`"),
        ("p", f"Baseline commit: `{results['baseline']}`; profile `{results['profile']}`; {seeds}."),
    ]
    machine = results.get("machine")
    if machine:
        text = (
            f"Machine (collected here; DVC's local queue ran the runs here): CPU {machine['cpu']}, torch "
            f"{machine['torch']} CPU kernels `{machine['cpu_capability']}`, {machine['cores']} cores."
        )
        blocks.append(("p", text))
    blocks.append(("p", "Test split, mean ± sd over seeds (sample sd), [min, max]:"))
    rows = [
        [g["variant"], g["arch"], str(g["n"]), str(len(g["failed"]))]
        + [_mean_sd(g["stats"][key], key, spread=True) for key, _ in keys]
        for g in results["groups"]
    ]
    blocks.append(("table", (["variant", "arch", "n", "failed", *(label for _, label in keys)], rows)))
    if results["vehicles"]:
        blocks.append(("p", "Per vehicle, test route optimal (mean ± sd):"))
        rows = [
            [g["variant"], g["arch"]]
            + [_mean_sd(g["vehicles"][v][route], route) for v in results["vehicles"]]
            for g in results["groups"]
        ]
        blocks.append(("table", (["variant", "arch", *results["vehicles"]], rows)))
    lines = results.get("baselines") or {}
    if lines:
        text = "; ".join(
            f"{entry['label']} {_fmt(entry[route]['mean'], route)}"
            + (f" (token acc. {_fmt(entry[M.TOKEN]['mean'], M.TOKEN)})" if M.TOKEN in entry else "")
            for entry in lines.values()
            if route in entry
        )
        blocks.append(("p", f"Baselines, test route optimal (the runs' own evaluate metrics): {text}."))
    header, rows = budget_table(results)
    if rows:
        formula = results["groups"][0]["budget"]["formula"]
        blocks.append(("h2", "Budget: test route optimal against training compute (the train stage's evals)"))
        blocks.append(("table", (header, rows)))
        blocks.append(("p", f"FLOPs per row-segment (hrm/models/flops.py): {formula}."))
    blocks.append(("p", "Experiments (`dvc exp show`, `dvc metrics diff HEAD <name>`):"))
    rows = []
    for run in results["runs"]:
        data_seed = "-" if run["data_seed"] is None else str(run["data_seed"])
        cells = [run["name"], (run["rev"] or "")[:10], run["arch"], str(run["seed"]), data_seed, run["state"]]
        optimal = _fmt(run["metrics"].get(route), route)
        rows.append([*cells, "yes" if run["reused"] else "no", optimal, run["error"] or ""])
    header = ["name", "rev", "arch", "seed", "data seed", "state", "reused", "route optimal", "error"]
    blocks.append(("table", (header, rows)))
    return blocks


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for kind, content in report_blocks(results):
        if kind == "table":
            header, rows = content
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        else:
            lines.append({"h1": "# ", "h2": "## ", "p": ""}[kind] + content)
        lines.append("")
    return "\n".join(lines)


def plot_bars(results: dict[str, Any], path: Path) -> None:
    """Mean test rates per arch with sd error bars, seeds as dots."""
    from hrm.evaluation.plots import new_figure, save_figure

    groups = results["groups"]
    keys = [k for k, _ in METRICS if k in RATES]
    plt, fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    for g, group in enumerate(groups):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(keys))]
        means = [group["stats"][k]["mean"] or 0.0 for k in keys]
        sds = [group["stats"][k]["sd"] or 0.0 for k in keys]
        label = group["arch"] if group["variant"] == "(profile)" else f"{group['arch']} {group['variant']}"
        ax.bar(xs, means, width, yerr=sds, capsize=3, label=f"{label} (n={group['n']})")
        members = [
            r["metrics"]
            for r in results["runs"]
            if r["state"] == "success" and (r["arch"], r["variant"]) == (group["arch"], group["variant"])
        ]
        for x, key in zip(xs, keys, strict=True):
            values = [m[key] for m in members if key in m]
            ax.plot([x] * len(values), values, "k.", markersize=3)
    ax.set_xticks(range(len(keys)), [dict(METRICS)[k] for k in keys])
    ax.set_ylabel("test rate (mean ± sd)")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:  # an all-failed comparison draws nothing to label
        ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def render_html(results: dict[str, Any], figures: dict[str, Path]) -> str:
    """One self-contained page of the same blocks as results.md, figures inlined as base64."""
    from hrm.evaluation.report import STYLE, image, table

    body = []
    for kind, content in report_blocks(results):
        if kind == "table":
            header, rows = content
            body.append(table(header, [([html.escape(c) for c in row], False) for row in rows]))
        else:
            text = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(content))
            body.append(f"<{kind}>{text}</{kind}>")
    captions = {
        "bars": "Test rates per arch, mean ± sd (dots: seeds)",
        "budget": "Budget curves: test metrics against compute, band = mean ± sd over seeds, baselines dashed",
    }
    body += [f"<h2>{html.escape(c)}</h2>" + image(figures[k], c) for k, c in captions.items() if k in figures]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>hrm compare</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    """The report folder, replaced whole. It ignores itself in git (a `.gitignore` of `*`): a report under any
    `--out` must not make the workspace dirty, or the next `hrm compare` would refuse to queue. A folder holding
    files compare did not write is refused, not replaced (hrm.io.staged_directory)."""
    with staged_directory(out_dir, manifest=True, owned=("budget.png",)) as staging:  # budget: not always
        atomic_write_text(staging / ".gitignore", "# written by hrm compare: a report, not source\n*\n")
        figures = {"bars": staging / "bars.png"}
        plot_bars(results, figures["bars"])
        if plot_budget(results, staging / "budget.png"):
            figures["budget"] = staging / "budget.png"
        atomic_write_json(staging / "results.json", results, indent=1)
        atomic_write_text(staging / "results.md", markdown(results))
        atomic_write_text(staging / "index.html", render_html(results, figures))
