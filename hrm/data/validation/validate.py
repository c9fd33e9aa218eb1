"""The validate stage: schemas, cross-file invariants, compliance score, leakage, reports and PNG.

Files that fail a strict layer are audited instead (`audit`). Reports are written (each atomically) whatever the
outcome; the stage then exits non-zero below the threshold or on any critical failure.
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
from hrm.data import colours, spec
from hrm.data.conversion import augment
from hrm.data.conversion.raw import RawDataset, RawSplit
from hrm.data.facts import ExampleFacts, example_facts
from hrm.data.generation import generate as generate_module
from hrm.data.validation import audit, compliance, consistency
from hrm.data.validation.invariants import Reading, read_checked

REPORT_JSON = "compliance.json"
# The DVC metric: the score and its parts only, so that `dvc exp show` is not led by 120 per-check columns
# (every check stays in compliance.json, a plain output).
SCORE_JSON = "score.json"
SCORE_KEYS = ("score", "passed", "threshold", "critical_failures", "categories")
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
    generate: generate_module.GenerateSettings  # counts, cost model, min route length, difficulty rules
    augment: str = "none"  # convert.augment: the HRM layout's train split holds these symmetries

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str | Path = "params.yaml") -> ValidateSettings:
        paths = section(params, "paths", source)
        validate = section(params, "validate", source)
        # types and ranges: schemas/params.schema.json (hrm.config.load_params); a sum is beyond a schema
        weights = validate["weights"]
        if abs(sum(weights.values()) - 1) > 1e-9:
            raise ConfigError(f"{source}: validate.weights must sum to 1, got {weights}")
        generate = generate_module.GenerateSettings.from_params(params, str(source))
        convert_settings = params.get("convert") or {}
        augment_setting = augment.parse(convert_settings.get("augment", "none"))
        return cls(
            raw_dir=Path(paths["raw"]),
            hrm_dir=Path(paths["hrm"]),
            reports_dir=Path(paths["data_reports"]),
            threshold=float(validate["threshold"]),
            weights={k: float(weights[k]) for k in compliance.CATEGORIES},
            plot_examples=int(validate["plot_examples"]),
            near_duplicate_share=float(validate["near_duplicate_share"]),
            generate=generate,
            augment=augment_setting,
        )


@dataclass
class Validation:
    report: compliance.ComplianceReport
    dataset: RawDataset | None  # None: the files failed a strict layer and were audited (no plot)
    facts: dict[str, ExampleFacts]
    seconds: float


# The checks that need files passing the strict layers, listed as not run when an audit cannot reach them.
FULL_CHECKS = (
    ("methodology", "variants_per_base", "every base is one group of puzzles, one example per vehicle"),
    ("methodology", "example_table", "per-example table passes its Pandera schema"),
    ("tokens", "encoding", "vocabulary and token table as specified"),
    ("tokens", "one_start_one_goal", "one start and one goal per input and label"),
    ("tokens", "no_unexpected_values", "inputs and labels hold only their allowed tokens"),
    ("tokens", "labels_are_input_plus_route", "a label is its input with the route marked"),
    ("route_optimality", "route_valid", "every route valid for its vehicle"),
    ("route_optimality", "route_optimal", "every route optimal (scipy Dijkstra on the cost model)"),
    ("route_optimality", "route_unique", "every optimum unique"),
    ("augmentation_quality", "same_base_map", "the vehicle variants of a base share one input grid"),
    ("augmentation_quality", "vehicles_distinct", "no two vehicles have the same access rules and costs"),
    ("augmentation_quality", "route_diversity", "the vehicles of a base do not all take the same route"),
    ("consistency", "summary_agrees", "the summary agrees with the files and params"),
    ("consistency", "hrm_layout_agrees", "the HRM layout agrees with the raw files"),
)


def validate_dataset(settings: ValidateSettings) -> Validation:
    """All checks on `settings.raw_dir` (and `settings.hrm_dir` unless None). Files that fail the schema or
    structure layer are audited instead: those layers' problems become findings and every check that can
    still run, runs; the rest are listed as not run."""
    began = time.perf_counter()
    reading = read_checked(settings.raw_dir)
    dataset, cost_table, views = reading.dataset, reading.cost_table, reading.splits
    if dataset is None:  # the audit: every check that can run on what the documents hold
        return _audit(settings, reading, began)

    facts = {
        name: example_facts(split, cost_table, dataset.rows, dataset.cols)
        for name, split in dataset.splits.items()
    }
    checks = audit.count_checks(views, settings.generate.bases, len(settings.generate.cost_model.vehicles))
    try:
        transforms = augment.transforms_for(settings.augment, dataset.rows, dataset.cols)
    except ConfigError as err:
        raise io.UserError(str(err)) from err
    leakage, leakage_figures = compliance.leakage_checks(dataset, settings.near_duplicate_share, transforms)
    checks.extend(leakage)
    group_checks, group_figures = compliance.group_checks(dataset, facts, cost_table)
    checks.extend(group_checks)
    table = compliance.example_table(dataset, facts)
    checks.append(compliance.table_check(dataset, table, settings.generate.min_route_length))
    checks.extend(compliance.token_checks(dataset, facts))
    checks.extend(compliance.route_checks(dataset, facts))
    # the audit's checks need no strict layer; across splits, identical maps are leakage's check already
    generic, audit_figures = audit.generic_checks(
        views, dataset.identifiers, settings.near_duplicate_share, across=False
    )
    checks.extend(generic)
    checks.append(
        consistency.summary_check(
            dataset, facts, settings.generate.cost_model, settings.generate.min_route_length
        )
    )
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
    difficulty, difficulty_figures = compliance.difficulty_checks(
        dataset, facts, settings.generate.difficulty
    )
    checks.extend(difficulty)
    figures = {
        **compliance.route_figures(dataset, facts, settings.generate.min_route_length),
        **group_figures,
        **leakage_figures,
        **audit_figures,
        "difficulty": difficulty_figures,
    }
    if layout_dataset is not dataset:
        figures["train_examples_augmented"] = layout_dataset.splits["train"].num_examples
    report = compliance.score(_ordered(checks), settings.weights, settings.threshold, figures)
    return Validation(report, dataset, facts, time.perf_counter() - began)


def _ordered(checks: list[compliance.Check]) -> list[compliance.Check]:
    order = {category: k for k, category in enumerate((*compliance.CATEGORIES, "consistency"))}
    return sorted(checks, key=lambda check: order[check.category])


def _audit(settings: ValidateSettings, reading: Reading, began: float) -> Validation:
    """The report for files that fail a strict layer: its findings, every check that still runs, the rest
    listed as not run (each scores 0)."""
    documents, views = reading.files.documents, reading.splits
    identifiers = documents.get(spec.RAW_IDENTIFIERS_FILE)
    file_problems, structure_problems = reading.file_problems, reading.structure_problems
    by_file: dict[str, list[str]] = {}
    for problem in file_problems:
        by_file.setdefault(problem.split(":", 1)[0], []).append(problem)
    checks = [
        audit.finding_check(
            "file_schemas",
            "methodology",
            "each of the 18 files is present, valid JSON and matches its schema in schemas/",
            [
                (" | ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else ""), 1)
                for found in by_file.values()
            ],
            18,
        )
    ]
    if file_problems:
        reason = "the files fail their schemas (file_schemas)"
        checks.append(audit.not_run("structure", "methodology", "cross-file invariants hold", reason))
    else:
        description = "cross-file invariants hold (lengths, indices, vocabulary, seq_len, cost table)"
        findings = [(problem, 1) for problem in structure_problems]
        checks.append(
            audit.finding_check(
                "structure", "methodology", description, findings, max(len(structure_problems), 1)
            )
        )
    checks += audit.count_checks(views, settings.generate.bases, len(settings.generate.cost_model.vehicles))
    checks.append(audit.summary_claims_check(views, documents.get(spec.RAW_SUMMARY_FILE)))
    checks.append(audit.base_overlap_check(views))
    generic, figures = audit.generic_checks(views, identifiers, settings.near_duplicate_share, across=True)
    checks += generic
    routes = audit.route_checks(views, documents.get(spec.RAW_SUMMARY_FILE))  # when a cost model exists
    checks += routes
    ran = {check.name for check in routes}
    reason = "needs files that pass the schema and structure layers (see file_schemas, structure)"
    checks += [
        audit.not_run(n, c, d, reason, n != "route_diversity") for c, n, d in FULL_CHECKS if n not in ran
    ]
    figures = {"near_duplicate_share": settings.near_duplicate_share, **figures}
    report = compliance.score(_ordered(checks), settings.weights, settings.threshold, figures)
    return Validation(report, None, {}, time.perf_counter() - began)


def _augmented_route_check(
    augmented: RawSplit, transform: np.ndarray, cost_table: np.ndarray, rows: int, cols: int
) -> compliance.Check:
    """Every transformed train example (what the HRM layout trains on) re-checked by the independent Dijkstra."""
    bad, checked = augment.transformed_route_failures(augmented, transform, cost_table, rows, cols)
    failures = [
        f"augmented {example}: the transformed label is not the unique optimal route of the transformed map"
        for example in bad
    ]
    return compliance.share_check(
        "augmented_routes",
        "route_optimality",
        f"every train example under the {len(set(transform.tolist())) - 1} other symmetries (convert.augment) "
        "carries the unique optimal route of its transformed map (scipy Dijkstra)",
        failures,
        checked,
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
        "not_run": [f"{check.category}.{check.name}" for check in report.checks if check.not_run],
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
        *(
            [
                "**Audit**: these files fail the strict layers (schemas, cross-file structure), so they were audited: "
                "the layers' problems are findings below, every check that can run on what the files hold ran, "
                "and the rest are listed as not run. `scenarios.png` is not drawn for them.",
                "",
            ]
            if any(check.name == "file_schemas" for check in report.checks)
            else []
        ),
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
        "score; `consistency` checks are not scored (those marked critical still fail the dataset).",
        "",
        "## Checks",
        "",
        "| category | check | value | expected | score | result | critical | what it measures |",
        "|---|---|---:|---|---:|---|---|---|",
    ]
    for check in report.checks:
        result = "**NOT RUN**" if check.not_run else "pass" if check.passed else "**FAIL**"
        lines.append(
            f"| {check.category} | {check.name} | {check.value:g} | {_cell(check.expected)} | {check.score:.4f} | "
            f"{result} | {'yes' if check.critical else 'no'} | {_cell(check.description)} |"
        )
    not_run = [check for check in report.checks if check.not_run]
    if not_run:
        lines += [
            "",
            "## Not run",
            "",
            "Each scores 0 and fails: a check that cannot look has not shown anything.",
            "",
        ]
        lines += [f"- {check.category}.{check.name}: {_cell(check.not_run)}" for check in not_run]
    failing = [check for check in report.checks if not check.passed and not check.not_run]
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
    lines += figures_markdown(figures)
    if "difficulty" in figures:
        lines += difficulty_markdown(figures["difficulty"])
    lines += [
        "",
        "Route optimality is re-checked by scipy's Dijkstra on the summary file's cost table, independently "
        "of the generator's A*; a route's optimum is unique when no cell off the route lies on another "
        "optimal route. See `scenarios.png` for scenarios with their vehicles' routes.",
        "",
    ]
    return "\n".join(lines)


def figures_markdown(figures: dict[str, Any]) -> list[str]:
    """The leakage and near-duplicate figures, then the route and diversity figures, as two tables."""
    lines = [
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
    flat = {key: value for key, value in figures.items() if key != "difficulty"}
    lines += [
        f"| {key} | {value} |"
        for key, value in flat.items()
        if "share" in key or "near_duplicate" in key or "identical" in key
    ]
    lines += ["", "## Routes and diversity", "", "| figure | value |", "|---|---:|"]
    lines += [
        f"| {key} | {value} |"
        for key, value in flat.items()
        if not ("share" in key or "near_duplicate" in key or "identical" in key)
    ]
    return lines


def difficulty_markdown(difficulty: dict[str, Any]) -> list[str]:
    """How much search the data needs: detours, turns, distinct routes per split and per vehicle."""
    rules = difficulty["rules"]
    splits = [name for name in spec.SPLITS if name in difficulty]
    lines = [
        "",
        "## Difficulty: how much search the routes need",
        "",
        "Detour = route cells beyond the Manhattan walk between start and goal (0 = monotone: every move "
        f"towards the goal). `detour_share`: routes with a detour >= {rules['min_detour']} cells; "
        f"`distinct_routes_share`: bases whose vehicles take >= {rules['min_distinct_routes']} distinct routes. "
        "Measured on the labels.",
        "",
        "| figure | " + " | ".join(splits) + " |",
        "|---|" + "---:|" * len(splits),
    ]
    for key in difficulty[splits[0]] if splits else []:
        lines.append(f"| {key} | " + " | ".join(str(difficulty[name][key]) for name in splits) + " |")
    vehicles = difficulty.get("by_vehicle", {})
    if vehicles:
        lines += [
            "",
            "| vehicle (both splits) | monotone share | mean detour | mean turns |",
            "|---|---:|---:|---:|",
        ]
        for vehicle, values in vehicles.items():
            lines.append(
                f"| {vehicle} | {values['monotone_share']} | {values['detour_mean']} | {values['turns_mean']} |"
            )
    return lines


def plot_scenarios(validation: Validation, count: int) -> bytes:
    """PNG of `count` test scenarios (evenly spread), each with its vehicles' routes drawn over the city."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    dataset = validation.dataset
    split = dataset.splits["test"] if dataset.splits["test"].num_groups else dataset.splits["train"]
    facts = validation.facts[split.name]
    count = max(1, min(count, split.num_groups))
    groups = np.unique(np.linspace(0, split.num_groups - 1, count).round().astype(int))
    rows, cols = dataset.rows, dataset.cols
    vehicle_colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    figure, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 5.6), squeeze=False)
    colour_map = ListedColormap(colours.token_colours())  # the same colours as evaluate's figures
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
                label=f"{split.vehicle_types[i]} (cost {cost:.0f}, {len(path)} cells)",
            )
        start = np.flatnonzero(grid.reshape(-1) == spec.START)
        goal = np.flatnonzero(grid.reshape(-1) == spec.GOAL)
        for cells, marker, colour in ((start, "o", colours.START), (goal, "*", colours.GOAL)):
            if cells.size:
                axis.plot(
                    cells[0] % cols,
                    cells[0] // cols,
                    marker=marker,
                    color=colour,
                    markersize=11,
                    markeredgecolor="black",
                )
        axis.set_title(f"{split.base_scenario_ids[members[0]]} ({split.name})")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=7, frameon=False)
    figure.suptitle(
        "Each vehicle's optimal route (label) over the city. Grey building, green park, light blue water, black "
        "closed; roads: alley beige, street grey-white, avenue yellow, highway orange, redder = more congested; "
        "start green circle, goal blue star",
        fontsize=9,
    )
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def write_reports(validation: Validation, settings: ValidateSettings) -> list[Path]:
    """Render every report in memory first, then replace each file atomically."""
    report = validation.report
    full = report_json(report)
    rendered = {
        REPORT_PNG: plot_scenarios(validation, settings.plot_examples)
        if settings.plot_examples and validation.dataset is not None
        else None,
        REPORT_MD: report_markdown(report, settings.raw_dir, settings.hrm_dir).encode("utf-8"),
        REPORT_JSON: io.dumps_json(full, indent=2).encode("utf-8"),
        SCORE_JSON: io.dumps_json({k: full[k] for k in SCORE_KEYS if k in full}, indent=2).encode("utf-8"),
    }
    written = []
    for name, data in rendered.items():
        if data is not None:
            io.atomic_write_bytes(settings.reports_dir / name, data)
            written.append(settings.reports_dir / name)
    if validation.dataset is None:  # audited files: a figure of another data set must not stay beside them
        (settings.reports_dir / REPORT_PNG).unlink(missing_ok=True)
    return written


def failure_message(report: compliance.ComplianceReport, reports_dir: Path) -> str:
    lines = [
        f"data validation failed: compliance score {report.score:.4f} (threshold {report.threshold:.2f})"
    ]
    failed = [check for check in report.critical_failures if not check.not_run]
    not_run = [check for check in report.checks if check.not_run]
    if failed:
        lines.append(f"{len(failed)} critical check(s) failed:")
        for check in failed:
            lines.append(f"  {check.category}.{check.name}: {check.failure_count} failure(s), e.g.")
            lines += [f"    {message}" for message in check.failures[:3]]
    if not_run:
        lines.append(f"{len(not_run)} check(s) not run (score 0): " + ", ".join(c.name for c in not_run))
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
