"""The validate stage: settings, the check registry `CHECKS`, one loop over it, the reports and PNG.

The files are read once (`raw.read_checked`); files that fail the schema or structure rules are audited: the
same registry over what they hold (`compliance`). Reports are written (each atomically) whatever the
outcome; the stage then exits non-zero below the threshold or on any critical failure.
"""

from __future__ import annotations

import io as bytes_io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hrm import io
from hrm.config import ConfigError, load_params, section
from hrm.data import colours, spec
from hrm.data.conversion import augment
from hrm.data.conversion.raw import RawDataset, RawSplit, Reading, read_checked
from hrm.data.facts import ExampleFacts, example_facts
from hrm.data.generation import generate as generate_module
from hrm.data.validation import compliance

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


# ---- the check registry ------------------------------------------------------------------------------------


class Run:
    """What the checks read, each computed once: the reading (strict dataset or lenient splits), the cost
    table, the per-example facts and their failures, the symmetries, the figures the checks leave."""

    def __init__(self, settings: ValidateSettings, reading: Reading):
        self.settings, self.reading = settings, reading
        self.dataset, self.views = reading.dataset, reading.splits
        self.identifiers = reading.files.documents.get(spec.RAW_IDENTIFIERS_FILE)  # as parsed: any JSON
        self.figures: dict[str, Any] = {}

    @cached_property
    def facts(self) -> dict[str, ExampleFacts]:
        """Per-example facts of every split whose routes can be read (all of them on strict files)."""
        rows, cols = self.reading.shape
        return {
            name: example_facts(view, self.reading.cost_table, rows, cols)
            for name, view in self.route_views.items()
        }

    @cached_property
    def route_views(self) -> dict[str, RawSplit]:
        return {
            name: view
            for name, view in self.views.items()
            if view.inputs is not None and view.labels is not None and view.example_identifier is not None
        }

    @cached_property
    def example_failures(self) -> dict[str, list[str]]:
        return compliance.example_failures(self.route_views, self.facts)

    @cached_property
    def transforms(self) -> tuple[int, ...]:
        try:
            return augment.transforms_for(self.settings.augment, self.dataset.rows, self.dataset.cols)
        except ConfigError as err:
            raise io.UserError(str(err)) from err

    def missing(self, need: str) -> str:
        """Why `need` is not available here, or "" when it is."""
        if need == "structure":
            return (
                ""
                if self.dataset is not None
                else "files that pass the schema and structure rules (see file_schemas, structure)"
            )
        if need == "cost model":
            reason = self.reading.cost_table_missing
            if not reason and not self.route_views:
                reason = "no split has readable inputs, labels and puzzle identifiers"
            return f"a cost model ({reason})" if reason else ""
        if need == "hrm layout":
            return "" if self.settings.hrm_dir is not None else "paths.hrm"
        if need == "augment":
            if self.settings.augment == "none" or self.dataset is None:
                return "convert.augment on strict files"
            return "" if len(self.transforms) > 1 else "convert.augment"
        raise ValueError(need)


@dataclass(frozen=True)
class Entry:
    """Checks computed together: each as "category.name" with what it measures (the row it gets when it
    cannot run; "" where it then does not apply: another check covers such files), what they need
    ("structure", "cost model", "hrm layout", "augment"; a check whose needs are missing is reported "not run:
    needs X", scored 0 and failed, unless an `optional` need is missing: it does not apply), which of them are
    not critical. `audit`: runs only where the strict reading failed (it reports that reading's problems, or
    stands in for a check that needs it). `figures`: `run` returns (checks, figures), kept under this key for
    the report. Weights: a category's checks share its `validate.weights` equally."""

    checks: dict[str, str]
    run: Callable[[Run], Any]  # -> list[compliance.Check], or (checks, figures) when `figures` names them
    needs: tuple[str, ...] = ()
    not_critical: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    audit: bool = False
    figures: str = ""


def _file_schemas(run: Run) -> list[compliance.Check]:
    by_file: dict[str, list[str]] = {}
    for problem in run.reading.file_problems:
        by_file.setdefault(problem.split(":", 1)[0], []).append(problem)
    findings = [
        (" | ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else ""), 1)
        for found in by_file.values()
    ]
    description = "each of the 18 files is present, valid JSON and matches its schema in schemas/"
    return [compliance.finding_check("file_schemas", "methodology", description, findings, 18)]


def _structure(run: Run) -> list[compliance.Check]:
    description = "cross-file invariants hold (lengths, indices, vocabulary, seq_len, cost table)"
    if run.reading.file_problems:
        reason = "the files fail their schemas (file_schemas)"
        return [compliance.not_run("structure", "methodology", "cross-file invariants hold", reason)]
    problems = run.reading.structure_problems
    findings = [(problem, 1) for problem in problems]
    return [
        compliance.finding_check("structure", "methodology", description, findings, max(len(problems), 1))
    ]


def _augmented(run: Run) -> list[compliance.Check]:
    """Every transformed train example (what the HRM layout trains on) re-checked by the independent Dijkstra."""
    dataset = run.dataset
    augmented, transform = augment.augment_split(
        dataset.splits["train"], dataset.rows, dataset.cols, run.transforms
    )
    run.layout_dataset = replace(dataset, splits={**dataset.splits, "train": augmented})
    bad, checked = augment.transformed_route_failures(
        augmented, transform, run.reading.cost_table, dataset.rows, dataset.cols
    )
    failures = [
        f"augmented {example}: the transformed label is not the unique optimal route of the transformed map"
        for example in bad
    ]
    description = (
        f"every train example under the {len(set(transform.tolist())) - 1} other symmetries (convert.augment) "
        "carries the unique optimal route of its transformed map (scipy Dijkstra)"
    )
    return [compliance.share_check("augmented_routes", "route_optimality", description, failures, checked)]


STRUCTURE, COST, LAYOUT = ("structure",), ("cost model",), ("hrm layout",)
CHECKS: tuple[Entry, ...] = (  # in report order within each category
    Entry(  # train/test examples and bases: always run (not run per file it cannot read)
        {},
        lambda run: compliance.count_checks(
            run.views, run.settings.generate.bases, len(run.settings.generate.cost_model.vehicles)
        ),
    ),
    Entry({"methodology.file_schemas": ""}, _file_schemas, audit=True),
    Entry({"methodology.structure": ""}, _structure, audit=True),
    Entry(
        {"methodology.summary_claims": ""},
        lambda run: [
            compliance.summary_claims_check(run.views, run.reading.files.documents.get(spec.RAW_SUMMARY_FILE))
        ],
        audit=True,
    ),
    Entry(  # strict: a count; audited: a share
        {"methodology.base_overlap": ""},
        lambda run: [compliance.base_overlap_check(run.views, audited=run.dataset is None)],
    ),
    Entry(
        {"methodology.identical_grids_across_splits": ""},
        lambda run: compliance.identical_grids_check(
            run.dataset, run.settings.near_duplicate_share, run.transforms
        ),
        STRUCTURE,
        figures="leakage",
    ),
    Entry(
        {
            "methodology.variants_per_base": "every base is one group of puzzles, one example per vehicle",
            "augmentation_quality.same_base_map": "the vehicle variants of a base share one input grid",
            "augmentation_quality.vehicles_distinct": "no two vehicles have the same access rules and costs",
            "augmentation_quality.route_diversity": "the vehicles of a base do not all take the same route",
        },
        lambda run: compliance.group_checks(run.dataset, run.facts, run.reading.cost_table),
        STRUCTURE + COST,
        not_critical=("route_diversity",),
        figures="groups",
    ),
    Entry(
        {"methodology.example_table": "per-example table passes its Pandera schema"},
        lambda run: [
            compliance.table_check(
                run.dataset,
                compliance.example_table(run.dataset, run.facts),
                run.settings.generate.min_route_length,
            )
        ],
        STRUCTURE,
    ),
    Entry(
        {
            "tokens.encoding": "vocabulary and token table as specified",
            "tokens.one_start_one_goal": "one start and one goal per input and label",
            "tokens.no_unexpected_values": "inputs and labels hold only their allowed tokens",
            "tokens.labels_are_input_plus_route": "a label is its input with the route marked",
        },
        lambda run: compliance.token_checks(run.dataset, run.example_failures),
        STRUCTURE,
    ),
    Entry(
        {
            f"route_optimality.{name}": compliance.ROUTE_CHECKS[name]
            for name in ("route_valid", "route_optimal")
        },
        lambda run: compliance.route_checks(
            run.route_views, run.example_failures, ("route_valid", "route_optimal")
        ),
        COST,
    ),
    Entry(
        {"route_optimality.route_unique": "every optimum unique"},
        lambda run: compliance.route_checks(run.route_views, run.example_failures, ("route_unique",)),
        STRUCTURE + COST,
    ),
    # the checks that need no cost model and no strict reading, on every file set
    Entry({}, lambda run: [compliance.identifier_check(run.views, run.identifiers)]),
    Entry({}, lambda run: [compliance.conflicting_labels_check(run.views)]),
    Entry(  # across splits, identical maps are identical_grids_across_splits' check where the files are strict
        {},
        lambda run: compliance.map_checks(
            run.views, run.settings.near_duplicate_share, across=run.dataset is None
        ),
        figures="maps",
    ),
    Entry({}, lambda run: [compliance.vehicle_labels_check(run.views)]),
    Entry({}, lambda run: [compliance.hrm_metadata_check(run.views, run.identifiers)]),
    Entry({}, lambda run: [compliance.ignore_label_check(run.views)]),
    Entry(
        {"consistency.summary_agrees": "the summary agrees with the files and params"},
        lambda run: [
            compliance.summary_check(
                run.dataset,
                run.facts,
                run.reading.cost_table,
                run.settings.generate.cost_model,
                run.settings.generate.min_route_length,
            )
        ],
        STRUCTURE + COST,
    ),
    Entry(
        {"route_optimality.augmented_routes": ""},
        _augmented,
        (*STRUCTURE, *COST, "augment"),
        optional=("augment",),
    ),
    Entry(
        {
            "consistency.hrm_layout_agrees": "the HRM layout agrees with the raw files",
            "consistency.hrm_layout_augment": "",
        },
        lambda run: [
            compliance.hrm_layout_check(getattr(run, "layout_dataset", run.dataset), run.settings.hrm_dir),
            _layout_augment_check(run.settings.hrm_dir, run.settings.augment),
        ],
        STRUCTURE + LAYOUT,
        optional=LAYOUT,
    ),
    Entry(
        {"augmentation_quality.detour_share": "", "augmentation_quality.distinct_routes_share": ""},
        lambda run: compliance.difficulty_checks(run.dataset, run.facts, run.settings.generate.difficulty),
        STRUCTURE,
        figures="difficulty",
    ),
)


def validate_dataset(settings: ValidateSettings) -> Validation:
    """Every check of `CHECKS` on `settings.raw_dir` (and `settings.hrm_dir` unless None), read once: strict
    files through every check; files that fail the schema or structure rules (ours broken, or anyone's) through
    every check that can run on what they hold, the layers' problems as findings, the rest not run."""
    began = time.perf_counter()
    run = Run(settings, read_checked(settings.raw_dir))
    strict = run.dataset is not None
    checks: list[compliance.Check] = []
    for entry in CHECKS:
        if entry.audit and strict:
            continue
        missing = [reason for need in entry.needs if (reason := run.missing(need))]
        if not missing:
            found = entry.run(run)
            if entry.figures:
                found, run.figures[entry.figures] = found
            checks += found
        elif not any(run.missing(need) for need in entry.optional):
            for key, description in entry.checks.items():
                category, name = key.split(".")
                if description:  # "": another check covers such files
                    reason = "needs " + " and ".join(missing)
                    checks.append(
                        compliance.not_run(
                            name, category, description, reason, name not in entry.not_critical
                        )
                    )
    figures = run.figures
    if strict:
        figures = {
            **compliance.route_figures(run.dataset, run.facts, settings.generate.min_route_length),
            **figures["groups"],
            **figures["leakage"],
            **figures["maps"],
            "difficulty": figures["difficulty"],
        }
        if hasattr(run, "layout_dataset"):
            figures["train_examples_augmented"] = run.layout_dataset.splits["train"].num_examples
    else:
        figures = {"near_duplicate_share": settings.near_duplicate_share, **figures["maps"]}
    order = {category: k for k, category in enumerate((*compliance.CATEGORIES, "consistency"))}
    checks.sort(key=lambda check: order[check.category])
    report = compliance.score(checks, settings.weights, settings.threshold, figures)
    return Validation(report, run.dataset, run.facts if strict else {}, time.perf_counter() - began)


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
