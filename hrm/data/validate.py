"""The validate stage: schemas, cross-file invariants, Pandera, compliance score, leakage, report and PNG.

Order: read and schema-check the 18 files, then their cross-file invariants (a failure in either means the
files cannot be read as a dataset: UserError, no report written); then every compliance check, scored with
params' weights. Reports are written (each file atomically) whether or not the dataset passes, so a failing
dataset leaves a readable explanation; the stage then exits non-zero below the threshold or on any critical
failure.
"""

from __future__ import annotations

import io as bytes_io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hrm import io
from hrm.config import ConfigError, load_params, section
from hrm.data import augment, compliance, consistency, spec
from hrm.data.invariants import RawDataset, build_dataset
from hrm.data.schemas import load_raw_files

REPORT_JSON = "compliance.json"
REPORT_MD = "compliance.md"
REPORT_PNG = "scenarios.png"


@dataclass(frozen=True)
class ValidateSettings:
    """Everything validate reads from params.yaml."""

    raw_dir: Path
    hrm_dir: Path | None  # None: do not check the HRM layout (tests of the raw files alone)
    reports_dir: Path
    threshold: float
    weights: dict[str, float]
    plot_examples: int
    near_duplicate_share: float
    expected_bases: dict[str, int]
    cost_model: spec.CostModel
    min_route_length: int
    augment: str = "none"  # convert.augment: the HRM layout's train split holds these symmetries

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str | Path = "params.yaml") -> ValidateSettings:
        paths = section(params, "paths", source)
        validate = section(params, "validate", source)
        generate = section(params, "generate", source)
        weights = validate.get("weights")
        if not isinstance(weights, dict) or set(weights) != set(compliance.CATEGORIES):
            raise ConfigError(
                f"{source}: validate.weights needs exactly the keys {list(compliance.CATEGORIES)}"
            )
        if (
            any(not isinstance(w, int | float) or w < 0 for w in weights.values())
            or abs(sum(weights.values()) - 1) > 1e-9
        ):
            raise ConfigError(
                f"{source}: validate.weights must be non-negative numbers summing to 1, got {weights}"
            )

        def number(key: str, low: float, high: float) -> float:
            value = validate.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(
                    f"{source}: validate.{key} must be a number in [{low}, {high}], got {value!r}"
                )
            return float(value)

        plot_examples = validate.get("plot_examples")
        if not isinstance(plot_examples, int) or isinstance(plot_examples, bool) or plot_examples < 0:
            raise ConfigError(
                f"{source}: validate.plot_examples must be an integer >= 0, got {plot_examples!r}"
            )
        bases = {}
        for split in spec.SPLITS:
            value = generate.get(f"{split}_bases")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{source}: generate.{split}_bases must be an integer >= 1, got {value!r}")
            bases[split] = value
        try:
            cost_model = spec.CostModel(
                tuple(spec.parse_vehicles(generate.get("vehicles"), f"{source}:generate.vehicles"))
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err
        min_route_length = generate.get("min_route_length")
        if (
            not isinstance(min_route_length, int)
            or isinstance(min_route_length, bool)
            or min_route_length < 2
        ):
            raise ConfigError(
                f"{source}: generate.min_route_length must be an integer >= 2, got {min_route_length!r}"
            )
        for key in ("raw", "hrm", "data_reports"):
            if not isinstance(paths.get(key), str):
                raise ConfigError(f"{source}: paths.{key} must be a folder path")
        convert_settings = params.get("convert") or {}
        augment_setting = augment.parse(convert_settings.get("augment", "none"))
        return cls(
            raw_dir=Path(paths["raw"]),
            hrm_dir=Path(paths["hrm"]),
            reports_dir=Path(paths["data_reports"]),
            threshold=number("threshold", 0.0, 1.0),
            weights={k: float(weights[k]) for k in compliance.CATEGORIES},
            plot_examples=plot_examples,
            near_duplicate_share=number("near_duplicate_share", 0.0, 1.0),
            expected_bases=bases,
            cost_model=cost_model,
            min_route_length=min_route_length,
            augment=augment_setting,
        )


@dataclass
class Validation:
    report: compliance.ComplianceReport
    dataset: RawDataset
    facts: dict[str, compliance.ExampleFacts]
    seconds: float


def validate_dataset(settings: ValidateSettings) -> Validation:
    """All checks on `settings.raw_dir` (and `settings.hrm_dir` unless None). UserError if unreadable."""
    began = time.perf_counter()
    dataset = build_dataset(load_raw_files(settings.raw_dir))
    cost_table = consistency.summary_cost_table(dataset.summary)
    if cost_table.shape != (len(dataset.identifiers), spec.VOCAB_SIZE):
        raise io.UserError(
            f"{spec.RAW_SUMMARY_FILE}: cost_model.cost_table has shape {list(cost_table.shape)}, expected "
            f"[{len(dataset.identifiers)}, {spec.VOCAB_SIZE}] (one row per entry of {spec.RAW_IDENTIFIERS_FILE}, "
            "one column per token): labels cannot be re-checked without it"
        )
    facts = {
        name: compliance.example_facts(split, cost_table, dataset.rows, dataset.cols)
        for name, split in dataset.splits.items()
    }
    n_vehicles = len(settings.cost_model.vehicles)
    checks: list[compliance.Check] = []
    for split in spec.SPLITS:
        expected = settings.expected_bases[split]
        checks.append(
            compliance.count_check(
                f"{split}_examples",
                "methodology",
                f"{split} examples ({expected} bases x {n_vehicles} vehicles, params.yaml)",
                dataset.splits[split].size,
                expected * n_vehicles,
            )
        )
        checks.append(
            compliance.count_check(
                f"{split}_bases",
                "methodology",
                f"{split} base scenarios (params.yaml generate.{split}_bases)",
                len(set(dataset.splits[split].base_ids)),
                expected,
            )
        )
    try:
        transforms = augment.transforms_for(settings.augment, dataset.rows, dataset.cols)
    except ConfigError as err:
        raise io.UserError(str(err)) from err
    leakage, leakage_figures = compliance.leakage_checks(dataset, settings.near_duplicate_share, transforms)
    checks.extend(leakage)
    group_checks, group_figures = compliance.group_checks(dataset, facts, cost_table)
    checks.extend(group_checks)
    table = compliance.example_table(dataset, facts)
    checks.append(compliance.table_check(dataset, table, settings.min_route_length))
    checks.extend(compliance.token_checks(dataset, facts))
    checks.extend(compliance.route_checks(dataset, facts))
    checks.append(consistency.summary_check(dataset, facts, settings.cost_model, settings.min_route_length))
    layout_dataset = dataset
    if len(transforms) > 1:
        augmented, transform = augment.augment_split(
            dataset.splits["train"], dataset.rows, dataset.cols, transforms
        )
        checks.append(_augmented_route_check(augmented, transform, cost_table, dataset.rows, dataset.cols))
        layout_dataset = replace(dataset, splits={**dataset.splits, "train": augmented})
    if settings.hrm_dir is not None:
        checks.append(consistency.hrm_layout_check(layout_dataset, settings.hrm_dir))
        checks.append(_layout_augment_check(settings.hrm_dir, settings.augment))
    figures = {
        **compliance.route_figures(dataset, facts, settings.min_route_length),
        **group_figures,
        **leakage_figures,
    }
    if layout_dataset is not dataset:
        figures["train_examples_augmented"] = layout_dataset.splits["train"].size
    order = {category: k for k, category in enumerate((*compliance.CATEGORIES, "consistency"))}
    checks.sort(key=lambda check: order[check.category])
    report = compliance.score(checks, settings.weights, settings.threshold, figures)
    return Validation(report, dataset, facts, time.perf_counter() - began)


def _augmented_route_check(
    augmented: Any, transform: np.ndarray, cost_table: np.ndarray, rows: int, cols: int
) -> compliance.Check:
    """Every transformed train example (what the HRM layout trains on) re-checked by the independent Dijkstra."""
    moved = np.flatnonzero(transform != 0)
    bad = augment.route_failures(
        augmented.inputs[moved],
        augmented.labels[moved],
        augmented.example_identifier[moved],
        cost_table,
        rows,
        cols,
    )
    failures = [
        f"augmented train example {int(moved[k])} (base {augmented.base_ids[moved[k]]}, "
        f"{augmented.vehicles[moved[k]]}, {augment.TRANSFORMS[transform[moved[k]]]}): the transformed label "
        "is not the unique optimal route of the transformed map"
        for k in bad
    ]
    return compliance.share_check(
        "augmented_routes",
        "route_optimality",
        f"every train example under the {len(set(transform.tolist())) - 1} other symmetries (convert.augment) "
        "carries the unique optimal route of its transformed map (scipy Dijkstra)",
        failures,
        len(moved),
    )


def _layout_augment_check(hrm_dir: Path, setting: str) -> compliance.Check:
    """The HRM layout was converted with this convert.augment (its train/dataset.json records it)."""
    path = hrm_dir / "train" / "dataset.json"
    failures = []
    try:
        written = json.loads(path.read_text(encoding="utf-8")).get(augment.LAYOUT_KEY, "none")
    except (OSError, ValueError, AttributeError):
        written = None  # missing or unreadable: hrm_layout_agrees reports it
    if written is not None and written != setting:
        failures.append(
            f"{path}: {augment.LAYOUT_KEY} = {written!r} but params.yaml convert.augment is {setting!r} "
            "(run the convert stage again)"
        )
    return compliance.share_check(
        "hrm_layout_augment",
        "consistency",
        "the HRM layout's train split was augmented as convert.augment says",
        failures,
        1,
    )


# ---- reports ---------------------------------------------------------------------------------------------


def report_json(report: compliance.ComplianceReport) -> dict[str, Any]:
    """Flat-ish numbers for `dvc metrics show/diff`: score, category scores, each check's measured value
    (counts or shares; pass/fail and failures are in compliance.md), key figures."""
    return {
        "score": report.score,
        "passed": report.passed,
        "threshold": report.threshold,
        "critical_failures": len(report.critical_failures),
        "categories": dict(report.category_scores),
        "checks": {f"{check.category}.{check.name}": check.value for check in report.checks},
        "figures": dict(report.figures),
    }


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(report: compliance.ComplianceReport, raw_dir: Path, hrm_dir: Path | None) -> str:
    verdict = "PASS" if report.passed else "FAIL"
    lines = [
        "# Data compliance report",
        "",
        f"**{verdict}**: compliance score **{report.score:.4f}** (threshold {report.threshold:.2f}), "
        f"{len(report.critical_failures)} critical failure(s).",
        "",
        f"Raw files: `{raw_dir.as_posix()}`; HRM layout: `{hrm_dir.as_posix() if hrm_dir else 'not checked'}`.",
        "",
        "## Score",
        "",
        "| category | weight | score | weighted |",
        "|---|---:|---:|---:|",
    ]
    for category in compliance.CATEGORIES:
        weight, value = report.weights[category], report.category_scores[category]
        lines.append(f"| {category} | {weight:.2f} | {value:.4f} | {weight * value:.4f} |")
    lines += [
        f"| **total** | 1.00 | | **{report.score:.4f}** |",
        "",
        "A category's score is the mean of its checks' scores. Critical checks fail the dataset whatever the "
        "score; `consistency` checks are critical and not scored.",
        "",
        "## Checks",
        "",
        "| category | check | value | expected | score | result | critical | what it measures |",
        "|---|---|---:|---|---:|---|---|---|",
    ]
    for check in report.checks:
        result = "pass" if check.passed else "**FAIL**"
        lines.append(
            f"| {check.category} | {check.name} | {check.value:g} | {_cell(check.expected)} | {check.score:.4f} | "
            f"{result} | {'yes' if check.critical else 'no'} | {_cell(check.description)} |"
        )
    failing = [check for check in report.checks if not check.passed]
    if failing:
        lines += ["", "## Failures", ""]
        for check in failing:
            lines.append(f"### {check.category}.{check.name} ({check.failure_count} failure(s))")
            lines.append("")
            lines += [f"- {_cell(message)}" for message in check.failures]
            if check.failure_count > len(check.failures):
                lines.append(f"- ... and {check.failure_count - len(check.failures)} more")
            lines.append("")
    figures = report.figures
    lines += [
        "",
        "## Leakage and near-duplicates",
        "",
        "Two base maps (input grids) are near-duplicates when the share of cells holding the same token is "
        f"above {figures['near_duplicate_share']:g} without being 1; identical pairs are counted apart, and an "
        "identical input grid in both splits is a critical failure. `map` compares the grids as they are; "
        "`layout` first folds each road's congestion level away, so the same streets under other traffic "
        "count as a near-duplicate too.",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    lines += [
        f"| {key} | {value} |"
        for key, value in figures.items()
        if "share" in key or "near_duplicate" in key or "identical" in key
    ]
    lines += ["", "## Routes and diversity", "", "| figure | value |", "|---|---:|"]
    lines += [
        f"| {key} | {value} |"
        for key, value in figures.items()
        if not ("share" in key or "near_duplicate" in key or "identical" in key)
    ]
    lines += [
        "",
        "Route optimality is re-checked by scipy's Dijkstra on the summary file's cost table, independently "
        "of the generator's A*; a route's optimum is unique when no cell off the route lies on another "
        "optimal route. See `scenarios.png` for scenarios with their vehicles' routes.",
        "",
    ]
    return "\n".join(lines)


def _token_colours() -> list[str]:
    """One colour per token: grey buildings, green parks, blue water, roads light->dark by class, congestion reddens."""
    colours = ["#ffffff", "#9e9e9e", "#7cb36b", "#5b9bd5"]
    class_base = {
        "alley": (0.93, 0.90, 0.80),
        "street": (0.97, 0.97, 0.97),
        "avenue": (1.0, 0.95, 0.70),
        "highway": (1.0, 0.85, 0.45),
    }
    jam = np.array((0.85, 0.25, 0.20))
    for road_class in spec.ROAD_CLASSES:
        base = np.array(class_base[road_class])
        for level in range(len(spec.CONGESTION_LEVELS)):
            mix = base + (jam - base) * (level / (len(spec.CONGESTION_LEVELS) - 1)) * 0.6
            colours.append("#" + "".join(f"{int(round(c * 255)):02x}" for c in mix))
    colours += ["#000000", "#00a000", "#d00000", "#ff00ff"]  # closed, start, goal, route
    assert len(colours) == spec.VOCAB_SIZE
    return colours


def plot_scenarios(validation: Validation, count: int) -> bytes:
    """PNG of `count` test scenarios (evenly spread), each with its vehicles' routes drawn over the city."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    dataset = validation.dataset
    split = dataset.splits["test"] if dataset.splits["test"].group_count else dataset.splits["train"]
    facts = validation.facts[split.name]
    count = max(1, min(count, split.group_count))
    groups = np.unique(np.linspace(0, split.group_count - 1, count).round().astype(int))
    rows, cols = dataset.rows, dataset.cols
    vehicle_colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    figure, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 5.6), squeeze=False)
    colour_map = ListedColormap(_token_colours())
    for axis, group in zip(axes[0], groups, strict=True):
        members = np.flatnonzero(split.example_group == group)
        grid = split.inputs[members[0]].reshape(rows, cols)
        axis.imshow(grid, cmap=colour_map, vmin=0, vmax=spec.VOCAB_SIZE - 1, interpolation="nearest")
        offsets = np.linspace(-0.2, 0.2, max(len(members), 1))
        for k, i in enumerate(members):
            path = facts.paths[i]
            if not path:
                continue
            ys, xs = np.divmod(np.asarray(path), cols)
            colour = vehicle_colours[(int(split.example_identifier[i]) - 1) % len(vehicle_colours)]
            cost = facts.route_cost[i]
            axis.plot(
                xs + offsets[k],
                ys + offsets[k],
                color=colour,
                linewidth=1.8,
                label=f"{split.vehicles[i]} (cost {cost:.0f}, {len(path)} cells)",
            )
        start = np.flatnonzero(grid.reshape(-1) == spec.START)
        goal = np.flatnonzero(grid.reshape(-1) == spec.GOAL)
        for cells, marker, colour in ((start, "o", "#00a000"), (goal, "*", "#d00000")):
            if cells.size:
                axis.plot(
                    cells[0] % cols,
                    cells[0] // cols,
                    marker=marker,
                    color=colour,
                    markersize=11,
                    markeredgecolor="black",
                )
        axis.set_title(f"{split.base_ids[members[0]]} ({split.name})")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=7, frameon=False)
    figure.suptitle(
        "Each vehicle's optimal route (label) over the city. Grey building, green park, blue water, black closed; "
        "roads: alley beige, street white, avenue yellow, highway orange, redder = more congested",
        fontsize=9,
    )
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def write_reports(validation: Validation, settings: ValidateSettings) -> list[Path]:
    """Render all three reports in memory first, then replace each file atomically."""
    report = validation.report
    rendered = {
        REPORT_PNG: plot_scenarios(validation, settings.plot_examples) if settings.plot_examples else None,
        REPORT_MD: report_markdown(report, settings.raw_dir, settings.hrm_dir).encode("utf-8"),
        REPORT_JSON: io.dumps_json(report_json(report), indent=2).encode("utf-8"),
    }
    written = []
    for name, data in rendered.items():
        if data is not None:
            io.atomic_write_bytes(settings.reports_dir / name, data)
            written.append(settings.reports_dir / name)
    return written


def failure_message(report: compliance.ComplianceReport, reports_dir: Path) -> str:
    lines = [
        f"data validation failed: compliance score {report.score:.4f} (threshold {report.threshold:.2f})"
    ]
    if report.critical_failures:
        lines.append(f"{len(report.critical_failures)} critical check(s) failed:")
        for check in report.critical_failures:
            lines.append(f"  {check.category}.{check.name}: {check.failure_count} failure(s), e.g.")
            lines += [f"    {message}" for message in check.failures[:3]]
    lines.append(f"full report: {reports_dir / REPORT_MD}")
    return "\n".join(lines)


def run(params_path: str | Path = "params.yaml") -> Validation:
    """Stage entry point: validate, write the reports, raise UserError if the dataset fails."""
    try:
        settings = ValidateSettings.from_params(load_params(params_path), params_path)
    except ConfigError as err:
        raise io.UserError(str(err)) from err
    validation = validate_dataset(settings)
    write_reports(validation, settings)
    if not validation.report.passed:
        raise io.UserError(failure_message(validation.report, settings.reports_dir))
    return validation
