"""Every check of validate's registry (`validate.CHECKS`) and the compliance score: each sub-check measured,
weighted by category (`validate.weights`).

The checks read the one in-memory form (`raw.RawSplit`): the strict dataset, or what broken or foreign files
hold (the audit: findings with counts and examples, a check that cannot look is "not run"). A critical check
fails the dataset whatever the score: a wrong label or a leaked test map is never acceptable.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from hrm.data import spec
from hrm.data.conversion.raw import RawDataset, RawSplit
from hrm.data.facts import ExampleFacts, detour_figures
from hrm.io import UserError, read_json, read_npy, shorten, shown

CATEGORIES = ("methodology", "tokens", "route_optimality", "augmentation_quality")
MAX_FAILURES_LISTED = 5
BLANK_IDENTIFIER = "<blank>"  # identifiers.json's id 0
# A failure names file, field, index and a value shortened by `shown`; a message longer than this carries data
# some site failed to shorten, and is cut so the report and the error stay readable.
MAX_FAILURE_CHARS = 500


@dataclass
class Check:
    """One sub-check: the value found, its score in [0, 1] and the first MAX_FAILURES_LISTED failures."""

    name: str
    category: str  # one of CATEGORIES, or "consistency" (critical only, not scored)
    description: str
    value: float
    score: float
    failures: list[str]
    expected: str = "= 1.0"
    critical: bool = True
    failure_count: int | None = None  # default: one per failure message
    passed: bool | None = None  # default: no failure
    not_run: str = ""  # why the check could not run (it then scores 0 and fails)

    def __post_init__(self) -> None:
        self.passed = not self.failures if self.passed is None else self.passed
        self.failure_count = len(self.failures) if self.failure_count is None else self.failure_count
        self.failures = [
            shorten(failure, MAX_FAILURE_CHARS) for failure in self.failures[:MAX_FAILURES_LISTED]
        ]
        self.score = round(self.score, 6)


def share_check(
    name: str,
    category: str,
    description: str,
    failures: list[str],
    total: int,
    critical: bool = True,
    failure_count: int | None = None,
) -> Check:
    """value = score = share of `total` items without a failure (at least 0); `failure_count`: items failed
    when a message covers several (the audit's findings)."""
    bad = len(failures) if failure_count is None else failure_count
    share = round(max(0.0, 1.0 - bad / total), 6) if total else 0.0
    passed = not failures and total > 0
    return Check(
        name,
        category,
        description,
        share,
        share,
        failures,
        critical=critical,
        failure_count=bad,
        passed=passed,
    )


def count_check(name: str, category: str, description: str, found: int, expected: int) -> Check:
    """Found must equal expected; the score shrinks with the ratio of the two."""
    score = min(found, expected) / max(found, expected) if max(found, expected) else 1.0
    failures = [] if found == expected else [f"{description}: found {found}, expected {expected}"]
    return Check(name, category, description, found, score, failures, expected=f"= {expected}")


def not_run(name: str, category: str, description: str, reason: str, critical: bool = True) -> Check:
    """A check that could not run: listed with its reason, scored 0, failed."""
    return Check(
        name, category, description, 0.0, 0.0, [f"not run: {reason}"], critical=critical, not_run=reason
    )


def finding_check(
    name: str,
    category: str,
    description: str,
    findings: list[tuple[str, int]],
    total: int,
    critical: bool = True,
) -> Check:
    """Passed when no finding; each finding is (message with examples, how many items it covers); the
    score is the share of the `total` items not covered by any finding."""
    messages = [message for message, _ in findings]
    bad = sum(count for _, count in findings)
    return share_check(name, category, description, messages, total, critical, failure_count=bad)


def _examples(items: list[Any], limit: int = 3) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---- the per-example table (Pandera) ------------------------------------------------------------------


def example_table(dataset: RawDataset, facts: dict[str, ExampleFacts]):
    """One row per example: split, base, vehicle, route length and cost, token counts."""
    import pandas as pd

    frames = []
    for name, split in dataset.splits.items():
        f = facts[name]
        frames.append(
            pd.DataFrame(
                {
                    "split": name,
                    "example": np.arange(split.num_examples),
                    "base_scenario_id": split.base_scenario_ids,
                    "vehicle": split.vehicle_types,
                    "puzzle_identifier": split.example_identifier,
                    "group": split.example_group,
                    "route_length": f.route_length,
                    "route_cost": f.route_cost,
                    "optimal_cost": f.optimal_cost,
                    "n_start": f.n_start_input,
                    "n_goal": f.n_goal_input,
                    "n_road": ((split.inputs >= spec.ROAD_BASE) & (split.inputs < spec.CLOSED)).sum(axis=1),
                    "n_closed": (split.inputs == spec.CLOSED).sum(axis=1),
                    "n_non_road": np.isin(split.inputs, spec.NON_ROAD_TOKENS).sum(axis=1),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def example_table_schema(vehicle_names: list[str], seq_len: int, min_route_length: int):
    """Pandera schema of the per-example table: domains, hardness and one row per (split, base, vehicle)."""
    import pandera.pandas as pa

    return pa.DataFrameSchema(
        {
            "split": pa.Column(str, pa.Check.isin(list(spec.SPLITS))),
            "example": pa.Column(int, pa.Check.ge(0)),
            "base_scenario_id": pa.Column(str, pa.Check.str_length(min_value=1)),
            "vehicle": pa.Column(str, pa.Check.isin(vehicle_names)),
            "puzzle_identifier": pa.Column(int, pa.Check.in_range(1, len(vehicle_names))),
            "group": pa.Column(int, pa.Check.ge(0)),
            "route_length": pa.Column(int, pa.Check.in_range(min_route_length, seq_len)),
            "route_cost": pa.Column(float, pa.Check.ge(0), nullable=True),
            "optimal_cost": pa.Column(float, pa.Check.ge(0), nullable=True),
            "n_start": pa.Column(int, pa.Check.ge(0)),
            "n_goal": pa.Column(int, pa.Check.ge(0)),
            "n_road": pa.Column(int, pa.Check.ge(1)),
            "n_closed": pa.Column(int, pa.Check.ge(0)),
            "n_non_road": pa.Column(int, pa.Check.ge(0)),
        },
        unique=["split", "base_scenario_id", "vehicle"],
        strict=True,
    )


def table_check(dataset: RawDataset, table, min_route_length: int) -> Check:
    """Run the Pandera schema; every failing row is reported as split, example, column and value."""
    import pandera.pandas as pa

    schema = example_table_schema(dataset.identifiers[1:], dataset.rows * dataset.cols, min_route_length)
    failures: dict[int, str] = {}
    try:
        schema.validate(table, lazy=True)
    except pa.errors.SchemaErrors as err:
        for case in err.failure_cases.itertuples(index=False):
            row = case.index
            if row is None or (isinstance(row, float) and np.isnan(row)):
                failures.setdefault(-1, f"per-example table: column {case.column}: {case.check}")
                continue
            record = table.iloc[int(row)]
            split = dataset.splits[record["split"]]
            where = split.where("labels", int(record["example"]))
            if case.check == "multiple_fields_uniqueness":
                message = (
                    f"{split.where('vehicle_types', int(record['example']))}: duplicated example, another row "
                    f"has the same (split, base_scenario_id, vehicle) = ({record['split']}, "
                    f"{shorten(str(record['base_scenario_id']))}, {shorten(str(record['vehicle']))})"
                )
            else:
                message = f"{where}: per-example table column {case.column} = {shown(case.failure_case)} fails {case.check}"
            failures.setdefault(int(row), message)
    ordered = [failures[key] for key in sorted(failures)]
    return share_check(
        "example_table",
        "methodology",
        f"per-example table passes its Pandera schema (route length >= {min_route_length}, one row per base and vehicle)",
        ordered,
        len(table),
    )


# ---- the per-example token and route checks, groups, leakage (strict files; route checks on any) -------


def _example_label(split: RawSplit, i: int, kind: str = "labels") -> str:
    bases, vehicles = split.base_scenario_ids or (), split.vehicle_types or ()  # None in broken files
    base = bases[i] if i < len(bases) else "?"
    vehicle = vehicles[i] if i < len(vehicles) else "?"
    return f"{split.where(kind, i)} (base {shorten(str(base))}, {shorten(str(vehicle))})"


def example_failures(splits: dict[str, RawSplit], facts: dict[str, ExampleFacts]) -> dict[str, list[str]]:
    """Failures of the per-example token and route checks, by check name, in example order (one pass, for
    the token and the route checks)."""
    found: dict[str, list[str]] = defaultdict(list)
    for name, split in splits.items():
        f = facts[name]
        for i in range(split.num_examples):
            label = _example_label(split, i)
            if not f.n_start_input[i] == f.n_goal_input[i] == f.n_start_label[i] == f.n_goal_label[i] == 1:
                found["one_start_one_goal"].append(
                    f"{_example_label(split, i, 'inputs')}: {f.n_start_input[i]} start / {f.n_goal_input[i]} "
                    f"goal cells in the input, {f.n_start_label[i]} / {f.n_goal_label[i]} in the label"
                )
            if f.unexpected_input[i] != 0 or f.unexpected_label[i] != 0:
                found["no_unexpected_values"].append(_unexpected_message(split, i))
            if f.bad_label_changes[i] != 0:
                found["labels_are_input_plus_route"].append(
                    _label_change_message(split, i, int(f.bad_label_changes[i]))
                )
            valid, reachable = f.route_valid[i], np.isfinite(f.optimal_cost[i])
            optimal = valid and f.route_cost[i] == f.optimal_cost[i]
            if not valid:
                found["route_valid"].append(f"{label}: invalid route: {f.route_reason[i]}")
            if not optimal:
                why = (
                    f"route costs {f.route_cost[i]:.0f} but the optimum is {f.optimal_cost[i]:.0f}"
                    if valid and reachable
                    else "the labelled route is invalid (see route_valid)"
                    if reachable
                    else "the goal is unreachable for this vehicle"
                )
                found["route_optimal"].append(f"{label}: {why}")
            if not f.route_unique[i]:
                why = (
                    "another route has the same optimal cost (tie)"
                    if optimal
                    else "the labelled route is not an optimal one (see route_optimal)"
                )
                found["route_unique"].append(f"{label}: {why}")
    return found


def token_checks(dataset: RawDataset, failures: dict[str, list[str]]) -> list[Check]:
    total = sum(split.num_examples for split in dataset.splits.values())
    encoding_problems = []
    for split in dataset.splits.values():
        meta, name = split.metadata, split.files["dataset"]
        if meta["vocab_size"] != spec.VOCAB_SIZE:
            encoding_problems.append(
                f"{name}: vocab_size = {meta['vocab_size']}, the token table has {spec.VOCAB_SIZE}"
            )
    table = dataset.summary.get("cost_model", {}).get("tokens")
    if table != spec.token_names():
        encoding_problems.append(
            f"{spec.RAW_SUMMARY_FILE}: cost_model.tokens differs from the token table {spec.token_names()}"
        )
    found = 0.0 if encoding_problems else 1.0
    description = (
        "vocabulary and token table as specified (road token = class and congestion, vocab 24, PAD 0)"
    )
    encoding = Check("encoding", "tokens", description, found, found, encoding_problems)
    return [
        encoding,
        share_check(
            "one_start_one_goal",
            "tokens",
            "exactly one start and one goal in every input and label",
            failures["one_start_one_goal"],
            total,
        ),
        share_check(
            "no_unexpected_values",
            "tokens",
            f"inputs hold only tokens {spec.INPUT_TOKENS[0]}..{spec.INPUT_TOKENS[-1]}, labels only "
            f"{spec.LABEL_TOKENS[0]}..{spec.LABEL_TOKENS[-1]} (no PAD, no route token in inputs)",
            failures["no_unexpected_values"],
            total,
        ),
        share_check(
            "labels_are_input_plus_route",
            "tokens",
            "each label equals its input except the route cells marked with the route token",
            failures["labels_are_input_plus_route"],
            total,
        ),
    ]


def _unexpected_message(split: RawSplit, i: int) -> str:
    for kind, grid, allowed in (
        ("inputs", split.inputs[i], spec.INPUT_TOKENS),
        ("labels", split.labels[i], spec.LABEL_TOKENS),
    ):
        bad = np.flatnonzero(~np.isin(grid, allowed))
        if bad.size:
            cell = int(bad[0])
            return f"{split.where(kind, i)}[{cell}] = {int(grid[cell])} is not a valid {kind[:-1]} token ({bad.size} such cells)"
    return f"{split.where('inputs', i)}: unexpected token"


def _label_change_message(split: RawSplit, i: int, count: int) -> str:
    inputs, labels = split.inputs[i], split.labels[i]
    endpoint = (inputs == spec.START) | (inputs == spec.GOAL)
    cell = int(np.flatnonzero((labels != inputs) & ~((labels == spec.ROUTE) & ~endpoint))[0])
    return (
        f"{split.where('labels', i)}[{cell}] = {int(labels[cell])} but the input has {int(inputs[cell])}: only route "
        f"marks may differ ({count} such cells)"
    )


ROUTE_CHECKS = {
    "route_valid": "every label's route connects start to goal as one simple path over cells the vehicle may enter",
    "route_optimal": "every route's cost equals the optimum found by scipy's Dijkstra with the summary's cost table",
    "route_unique": "every optimum is unique (no other route of the same cost)",
}


def route_checks(
    splits: dict[str, RawSplit], failures: dict[str, list[str]], names: Iterable[str] = tuple(ROUTE_CHECKS)
) -> list[Check]:
    """The route checks over every example of `splits` (the strict splits, or what broken files hold)."""
    total = sum(split.num_examples for split in splits.values())
    return [share_check(n, "route_optimality", ROUTE_CHECKS[n], failures[n], total) for n in names]


def _group_rows(split: RawSplit) -> list[np.ndarray]:
    return [np.flatnonzero(split.example_group == g) for g in range(split.num_groups)]


def _variant_problems(split: RawSplit, rows: np.ndarray, bases: list[str], vehicles: list[str]) -> list[str]:
    """What keeps one group from being one base with one puzzle and one example per vehicle."""
    puzzles = np.unique(split.example_puzzle[rows])
    found = sorted(split.vehicle_types[i] for i in rows)
    problems = []
    if len(bases) != 1:
        problems.append(f"{len(bases)} base ids in one group")
    if found != sorted(vehicles):
        missing = sorted(set(vehicles) - set(found))
        extra = sorted((Counter(found) - Counter(vehicles)).elements())
        problems.append(
            f"vehicles {found}"
            + (f", missing {missing}" if missing else "")
            + (f", extra {extra}" if extra else "")
        )
    if len(puzzles) != len(rows):
        problems.append(f"{len(rows)} examples in {len(puzzles)} puzzles (one example per puzzle expected)")
    return problems


def group_checks(
    dataset: RawDataset, facts: dict[str, ExampleFacts], cost_table: np.ndarray
) -> tuple[list[Check], dict]:
    """4 variants per base, one base map per base, route diversity, distinct vehicles."""
    vehicles = dataset.identifiers[1:]
    variant_failures, map_failures, diversity_failures = [], [], []
    distinct_routes: list[int] = []
    total_groups = 0
    for split in dataset.splits.values():
        groups_of_base: dict[str, list[int]] = defaultdict(list)
        for g, rows in enumerate(_group_rows(split)):
            total_groups += 1
            bases = sorted({split.base_scenario_ids[i] for i in rows})
            for base in bases:
                groups_of_base[base].append(g)
            where = f"{split.files['group_indices']} group {g} (base {', '.join(bases)})"
            problems = _variant_problems(split, rows, bases, vehicles)
            if problems:
                variant_failures.append(f"{where}: " + "; ".join(problems))
            first = split.inputs[rows[0]]
            differing = [int(i) for i in rows if not np.array_equal(split.inputs[i], first)]
            if differing:
                map_failures.append(
                    f"{split.where('inputs', differing[0])} differs from {split.where('inputs', int(rows[0]))}: "
                    f"the variants of base {split.base_scenario_ids[rows[0]]} must share one input grid"
                )
            distinct = len({split.labels[i].tobytes() for i in rows})
            distinct_routes.append(distinct)
            if distinct == 1 and len(rows) > 1:
                diversity_failures.append(f"{where}: all {len(rows)} vehicles take the same route")
        for base, groups in groups_of_base.items():
            if len(groups) > 1:
                variant_failures.append(
                    f"{split.files['base_scenario_ids']}: base {base} is spread over groups {groups} (one group per base)"
                )
    identical_vehicles = [
        f"{spec.RAW_SUMMARY_FILE}: vehicles {vehicles[a - 1]} and {vehicles[b - 1]} have the same costs and access"
        for a in range(1, cost_table.shape[0])
        for b in range(a + 1, cost_table.shape[0])
        if np.array_equal(cost_table[a], cost_table[b])
    ]
    histogram = Counter(distinct_routes)
    figures = {
        "distinct_routes_per_base_mean": round(float(np.mean(distinct_routes)), 4)
        if distinct_routes
        else 0.0,
        **{f"bases_with_{k}_distinct_routes": int(histogram.get(k, 0)) for k in range(1, len(vehicles) + 1)},
    }
    checks = [
        share_check(
            "variants_per_base",
            "methodology",
            f"every base is one group of {len(vehicles)} puzzles, one example per vehicle",
            variant_failures,
            total_groups,
        ),
        share_check(
            "same_base_map",
            "augmentation_quality",
            "the vehicle variants of a base share one input grid",
            map_failures,
            total_groups,
        ),
        share_check(
            "vehicles_distinct",
            "augmentation_quality",
            "no two vehicles have the same access rules and costs",
            identical_vehicles,
            max(1, len(vehicles) * (len(vehicles) - 1) // 2),
        ),
        share_check(
            "route_diversity",
            "augmentation_quality",
            "the vehicles of a base do not all take the same route",
            diversity_failures,
            total_groups,
            critical=False,
        ),
    ]
    return checks, figures


def first_index(keys: Iterable[Any]) -> dict[Any, int]:
    """Each key -> the index of its first occurrence, in order of first occurrence."""
    first: dict[Any, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return first


def base_maps(split: RawSplit, per_base: bool = False) -> tuple[np.ndarray, list[int]]:
    """One input grid per group (its first example) and that example's index; `per_base` (the audit, where
    groups may be unreadable): per base id, or per example when base ids are unreadable too."""
    if not per_base:
        keys = split.example_group.tolist()
    else:
        keys = (
            range(split.num_examples)
            if split.base_scenario_ids is None
            else map(str, split.base_scenario_ids)
        )
    firsts = sorted(first_index(keys).values())
    return split.inputs[firsts], firsts


def layout_tokens() -> np.ndarray:
    """Lookup [256] folding every road token onto its class at congestion 'free' (other tokens unchanged)."""
    fold = np.arange(256, dtype=np.uint8)
    levels = len(spec.CONGESTION_LEVELS)
    for token in range(spec.ROAD_BASE, spec.CLOSED):
        fold[token] = spec.ROAD_BASE + (token - spec.ROAD_BASE) // levels * levels
    return fold


def equal_share_matrix(a: np.ndarray, b: np.ndarray, chunk: int = 64) -> np.ndarray:
    """[len(a), len(b)] share of cells where two maps hold the same token."""
    out = np.empty((len(a), len(b)), dtype=np.float64)
    for lo in range(0, len(a), chunk):
        out[lo : lo + chunk] = (a[lo : lo + chunk, None, :] == b[None, :, :]).mean(axis=2)
    return out


def identical_grids_check(
    dataset: RawDataset, near_duplicate_share: float, transforms: tuple[int, ...] = (0,)
) -> tuple[list[Check], dict]:
    """Identical grids shared by train and test (critical); near-duplicate maps (reported).

    `transforms`: the symmetries the train split is trained under (`hrm.data.conversion.augment`, convert.augment): a
    test grid equal to any of them applied to a train grid is a leak."""
    from hrm.data.conversion.augment import TRANSFORMS, transform_grids

    train, test = dataset.splits["train"], dataset.splits["test"]
    train_grids: dict[bytes, tuple[int, int]] = {}
    for t in transforms:
        grids = train.inputs if t == 0 else transform_grids(train.inputs, dataset.rows, dataset.cols, t)
        for i in range(train.num_examples):
            train_grids.setdefault(grids[i].tobytes(), (i, t))
    test_grids = first_index(grid.tobytes() for grid in test.inputs)
    identical = []
    for key, j in test_grids.items():
        if key in train_grids:
            i, t = train_grids[key]
            identical.append(
                f"{test.where('inputs', j)} (base {test.base_scenario_ids[j]}) is identical to "
                f"{train.where('inputs', i)} (base {train.base_scenario_ids[i]})"
                + (f" under {TRANSFORMS[t]} (convert.augment)" if t else "")
            )
    test_maps = len(test_grids)
    description = "no input grid of the test split also in the train split" + (
        f" under any of its {len(transforms)} trained symmetries" if len(transforms) > 1 else ""
    )
    score = 1 - len(identical) / test_maps if test_maps else 0.0
    identical_check = Check(
        "identical_grids_across_splits", "methodology", description, len(identical), score, identical, "= 0"
    )

    return [identical_check], near_duplicate_figures(train, test, near_duplicate_share)


def near_duplicate_figures(train: RawSplit, test: RawSplit, near_duplicate_share: float) -> dict[str, Any]:
    """Identical and near-duplicate base-map pairs within and across the splits (reported, not scored)."""
    figures: dict[str, Any] = {"near_duplicate_share": near_duplicate_share}
    train_maps, test_maps_array = base_maps(train)[0], base_maps(test)[0]
    # "map": the input grid as is; "layout": congestion levels folded away, so that one city at two hours of
    # the day (same streets, different traffic) still shows up as a near-duplicate
    for view, fold in (("map", None), ("layout", layout_tokens())):
        train_view = train_maps if fold is None else fold[train_maps]
        test_view = test_maps_array if fold is None else fold[test_maps_array]
        cross = equal_share_matrix(test_view, train_view)
        figures[f"near_duplicate_{view}_pairs_across_splits"] = int(
            ((cross > near_duplicate_share) & (cross < 1)).sum()
        )
        figures[f"identical_{view}_pairs_across_splits"] = int((cross == 1).sum())
        figures[f"max_{view}_equal_share_across_splits"] = round(float(cross.max()), 4) if cross.size else 0.0
        figures[f"mean_{view}_equal_share_across_splits"] = (
            round(float(cross.mean()), 4) if cross.size else 0.0
        )
        for name, maps in (("train", train_view), ("test", test_view)):
            within = equal_share_matrix(maps, maps)[np.triu_indices(len(maps), k=1)]
            figures[f"near_duplicate_{view}_pairs_within_{name}"] = int(
                ((within > near_duplicate_share) & (within < 1)).sum()
            )
            figures[f"identical_{view}_pairs_within_{name}"] = int((within == 1).sum())
            figures[f"max_{view}_equal_share_within_{name}"] = (
                round(float(within.max()), 4) if within.size else 0.0
            )
    return figures


# ---- the checks that need no cost model and no strict reading (any 18-file set, the audit's too) --------


def _held(view: RawSplit) -> dict[str, int | None]:
    """Examples and distinct base ids a split holds; None where its file is unreadable."""
    bases = view.base_scenario_ids
    return {
        "examples": None if view.inputs is None else view.num_examples,
        "bases": None if bases is None else len({str(b) for b in bases}),
    }


def count_checks(views: dict[str, RawSplit], expected_bases: dict[str, int], n_vehicles: int) -> list[Check]:
    """Examples and distinct base ids per split, against params (the same checks as on our own files)."""
    checks = []
    for split, view in views.items():
        expected, held = expected_bases[split], _held(view)
        wanted = {  # key -> (expected count, description, the file it needs, description when not run)
            "examples": (
                expected * n_vehicles,
                f"{split} examples ({expected} bases x {n_vehicles} vehicles, params.yaml)",
                "inputs",
                f"{split} examples vs params.yaml",
            ),
            "bases": (
                expected,
                f"{split} base scenarios (params.yaml generate.{split}_bases)",
                "base_scenario_ids",
                f"{split} base scenarios vs params.yaml",
            ),
        }
        for key, (count, description, kind, not_run_description) in wanted.items():
            if held[key] is None:
                reason = f"{view.files[kind]}: {view.unreadable.get(kind, 'unreadable')}"
                checks.append(not_run(f"{split}_{key}", "methodology", not_run_description, reason))
            else:
                checks.append(count_check(f"{split}_{key}", "methodology", description, held[key], count))
    return checks


def _claims(summary: Any, split: str) -> dict[str, Any]:
    """What a summary says of a split's size: our `counts.<split>.{examples,bases}` or flat
    `<split>_examples` / `<split>_bases` keys (the original tool's style)."""
    if not isinstance(summary, dict):
        return {}
    claims = {}
    counts = summary.get("counts")
    if isinstance(counts, dict) and isinstance(counts.get(split), dict):
        claims.update({k: v for k, v in counts[split].items() if k in ("examples", "bases")})
    for key in ("examples", "bases"):
        for flat in (f"{split}_{key}", f"num_{split}_{key}"):
            if flat in summary:
                claims[key] = summary[flat]
    return claims


def summary_claims_check(views: dict[str, RawSplit], summary: Any) -> Check:
    description = "the summary's own counts (examples, bases per split) equal what the files hold"
    findings: list[tuple[str, int]] = []
    compared = 0
    for split, view in views.items():
        held = _held(view)
        for key, claim in _claims(summary, split).items():
            if held[key] is None:
                continue
            compared += 1
            if claim != held[key]:
                message = f"{spec.RAW_SUMMARY_FILE}: claims {shown(claim)} {split} {key}, the files hold {held[key]}"
                findings.append((message, 1))
    if not compared:
        reason = f"{spec.RAW_SUMMARY_FILE} states no per-split counts"
        return not_run("summary_claims", "methodology", description, reason)
    return finding_check("summary_claims", "methodology", description, findings, compared)


def identifier_check(views: dict[str, RawSplit], identifiers: Any) -> Check:
    """Blank or missing base ids, vehicle names and puzzle identifiers (the blank id 0 tells the model
    nothing: every vehicle looks the same to it)."""
    findings: list[tuple[str, int]] = []
    total = 0
    for view in views.values():
        for kind, values in (
            ("base_scenario_ids", view.base_scenario_ids),
            ("vehicle_types", view.vehicle_types),
        ):
            if values is None:
                continue
            total += len(values)
            blank = [
                i for i, v in enumerate(values) if v is None or not str(v).strip() or v == BLANK_IDENTIFIER
            ]
            if blank:
                message = f"{view.where(kind)}: {len(blank)} blank or missing entries, e.g. indices {_examples(blank)}"
                findings.append((message, len(blank)))
        if view.example_identifier is not None:
            total += view.example_identifier.size
            blank = np.flatnonzero(view.example_identifier == 0).tolist()
            if blank:
                message = (
                    f"{view.where('puzzle_identifiers')}: {len(blank)} examples have puzzle identifier 0 (blank): "
                    f"the model is never told the vehicle, e.g. examples {_examples(blank)}"
                )
                findings.append((message, len(blank)))
    if isinstance(identifiers, list):
        total += len(identifiers)
        blank = [
            i
            for i, v in enumerate(identifiers[1:], start=1)
            if not isinstance(v, str) or not v.strip() or v == BLANK_IDENTIFIER
        ]
        if blank:
            findings.append(
                (f"{spec.RAW_IDENTIFIERS_FILE}: ids {_examples(blank)} have a blank name", len(blank))
            )
        if len(identifiers) < 2:
            findings.append((f"{spec.RAW_IDENTIFIERS_FILE}: {shown(identifiers)} names no vehicle", 1))
            total += 1
    return finding_check(
        "identifiers_present",
        "methodology",
        "no blank or missing base id, vehicle name or puzzle identifier",
        findings,
        max(total, 1),
    )


def conflicting_labels_check(views: dict[str, RawSplit]) -> Check:
    """The same input with the same puzzle identifier but different labels: no model can tell them apart."""
    description = (
        "no input appears with the same puzzle identifier and different labels (within and across splits)"
    )
    usable = {n: v for n, v in views.items() if v.inputs is not None and v.labels is not None}
    if not usable:
        return not_run("conflicting_labels", "tokens", description, "no split has readable inputs and labels")
    seen: dict[tuple[bytes, int], dict[bytes, tuple[str, int]]] = defaultdict(dict)
    notes = []
    for name, view in usable.items():
        ids = (
            view.example_identifier if view.example_identifier is not None else np.full(view.num_examples, -1)
        )
        if view.example_identifier is None:
            notes.append(f"{name}: puzzle identifiers unreadable, inputs compared alone")
        for i in range(view.num_examples):
            seen[(view.inputs[i].tobytes(), int(ids[i]))].setdefault(view.labels[i].tobytes(), (name, i))
    conflicts = [(key, labels) for key, labels in seen.items() if len(labels) > 1]
    failures = []
    for (_, identifier), labels in conflicts[:MAX_FAILURES_LISTED]:
        places = [f"{usable[s].where('inputs', i)} ({usable[s].about(i)})" for s, i in labels.values()]
        failures.append(
            f"one input with puzzle identifier {identifier} carries {len(labels)} different labels: {_examples(places)}"
        )
    total, bad = sum(v.num_examples for v in usable.values()), sum(len(labels) for _, labels in conflicts)
    check = share_check("conflicting_labels", "tokens", description, failures, total, failure_count=bad)
    if conflicts:  # a header above the (at most MAX_FAILURES_LISTED) conflicts listed
        notes_text = f" ({'; '.join(notes)})" if notes else ""
        check.failures.insert(0, f"{len(conflicts)} inputs carry conflicting labels{notes_text}")
    return check


def map_checks(
    views: dict[str, RawSplit], near_share: float, across: bool = True
) -> tuple[list[Check], dict]:
    """Identical base maps (critical: the same city twice is one scenario counted twice, or a leak across
    splits) and near-identical ones (share of equal cells above `near_share`: reported, not scored)."""
    description = "no two base scenarios share an identical map" + (
        " (within and across splits)" if across else " (within a split)"
    )
    usable = {n: v for n, v in views.items() if v.inputs is not None}
    if not usable:
        reason = "no split has readable inputs"
        return [not_run("identical_maps", "augmentation_quality", description, reason)], {}
    maps = {n: base_maps(v, per_base=True) for n, v in usable.items()}
    findings, near_findings, figures = [], [], {}
    pairs = [(n, n) for n in usable] + ([tuple(p) for p in combinations(usable, 2)] if across else [])
    total = sum(len(m[1]) for m in maps.values())
    for a, b in pairs:
        (grids_a, idx_a), (grids_b, idx_b) = maps[a], maps[b]
        if grids_a.shape[1] != grids_b.shape[1]:
            continue
        share = equal_share_matrix(grids_a, grids_b)
        if a == b:
            share[np.tril_indices(len(idx_a))] = 0.0  # each pair once, no map with itself
        where = f"within {a}" if a == b else f"across {a} and {b}"
        identical = np.argwhere(share == 1.0)
        near = np.argwhere((share > near_share) & (share < 1.0))
        figures[f"audit_identical_map_pairs_{where.replace(' ', '_')}"] = len(identical)
        figures[f"audit_near_identical_map_pairs_{where.replace(' ', '_')}"] = len(near)
        if len(identical):
            maps_involved = len(
                {int(i) for i in identical[:, 0]}
                | {int(j) + (0 if a == b else 10**9) for j in identical[:, 1]}
            )
            examples = [
                f"{usable[a].where('inputs', idx_a[i])} ({usable[a].about(idx_a[i])}) = "
                f"{usable[b].where('inputs', idx_b[j])} ({usable[b].about(idx_b[j])})"
                for i, j in identical[:3]
            ]
            message = f"{len(identical)} pairs of base maps identical {where}, e.g. {'; '.join(examples)}"
            findings.append((message, min(maps_involved, total)))
        if len(near):
            i, j = near[0]
            message = (
                f"{len(near)} pairs of base maps near-identical {where} (> {near_share:g} of cells equal), e.g. "
                f"{usable[a].where('inputs', idx_a[i])} and {usable[b].where('inputs', idx_b[j])}: "
                f"{share[i, j]:.3f} equal"
            )
            near_findings.append((message, len(near)))
    checks = [
        finding_check("identical_maps", "augmentation_quality", description, findings, max(total, 1)),
        finding_check(
            "near_identical_maps",
            "consistency",
            f"base maps with more than {near_share:g} of their cells equal (reported, not scored)",
            near_findings,
            max(total * (total - 1) // 2, 1),
            critical=False,
        ),
    ]
    return checks, figures


def vehicle_labels_check(views: dict[str, RawSplit]) -> Check:
    """Two vehicles with the same label in every base they share: they are one vehicle to the model."""
    description = "no two vehicles have identical labels in every base"
    per_vehicle: dict[str, dict[tuple[str, str], bytes]] = defaultdict(dict)
    for name, view in views.items():
        if view.labels is None or view.base_scenario_ids is None or view.vehicle_types is None:
            continue
        for i in range(view.num_examples):
            per_vehicle[str(view.vehicle_types[i])][(name, str(view.base_scenario_ids[i]))] = view.labels[
                i
            ].tobytes()
    if len(per_vehicle) < 2:
        reason = "fewer than two vehicles with readable labels, base ids and vehicle names"
        return not_run("vehicle_labels_distinct", "augmentation_quality", description, reason)
    findings = []
    pairs = list(combinations(sorted(per_vehicle), 2))
    for a, b in pairs:
        shared = per_vehicle[a].keys() & per_vehicle[b].keys()
        same = [base for base in shared if per_vehicle[a][base] == per_vehicle[b][base]]
        if shared and len(same) == len(shared):
            findings.append(
                (
                    f"vehicles {shown(a)} and {shown(b)} have identical labels in all {len(shared)} bases they share",
                    1,
                )
            )
    return finding_check("vehicle_labels_distinct", "augmentation_quality", description, findings, len(pairs))


def hrm_metadata_check(views: dict[str, RawSplit], identifiers: Any) -> Check:
    """What dataset.json tells HRM (seq_len, vocab_size, num_puzzle_identifiers) against the arrays."""
    description = "seq_len, vocab_size and num_puzzle_identifiers in dataset.json equal what the arrays hold"
    findings: list[tuple[str, int]] = []
    compared = 0
    for view in views.values():
        meta = view.metadata
        if meta is None:
            findings.append((f"{view.files['dataset']}: not readable as HRM metadata", 1))
            compared += 1
            continue
        grids = [g for g in (view.inputs, view.labels) if g is not None]
        facts = {}
        if grids:
            facts["seq_len"] = int(grids[0].shape[1])
            facts["vocab_size"] = int(max(int(g.max()) for g in grids)) + 1
        if isinstance(identifiers, list):
            facts["num_puzzle_identifiers"] = len(identifiers)
        for key, held in facts.items():
            compared += 1
            claim = meta.get(key)
            wrong = claim != held if key != "vocab_size" else not isinstance(claim, int) or claim < held
            if wrong:
                what = "the largest token + 1" if key == "vocab_size" else "the files"
                findings.append((f"{view.files['dataset']}: {key} = {shown(claim)}, {what}: {held}", 1))
        rows, cols = meta.get("rows"), meta.get("cols")
        if isinstance(rows, int) and isinstance(cols, int) and "seq_len" in facts:
            compared += 1
            if rows * cols != facts["seq_len"]:
                message = f"{view.files['dataset']}: rows x cols = {rows} x {cols} but the grids hold {facts['seq_len']} cells"
                findings.append((message, 1))
    return finding_check("hrm_metadata", "tokens", description, findings, max(compared, 1))


def ignore_label_check(views: dict[str, RawSplit]) -> Check:
    """Labels holding the ignore label drop those cells out of HRM's loss (the first attempt's 100% that
    meant nothing): every cell must be a real target."""
    description = "no label cell holds the ignore label (every cell is a target)"
    findings: list[tuple[str, int]] = []
    total = 0
    for view in views.values():
        if view.labels is None:
            continue
        ignore = (view.metadata or {}).get("ignore_label_id", spec.PAD)
        total += view.num_examples
        rows = np.flatnonzero((view.labels == ignore).any(axis=1)).tolist()
        if rows:
            cells = int((view.labels == ignore).sum())
            message = (
                f"{view.where('labels')}: {len(rows)} labels hold {cells} cells of the ignore label {ignore}, "
                f"e.g. examples {_examples(rows)}"
            )
            findings.append((message, len(rows)))
    if not total:
        return not_run("labels_cover_every_cell", "tokens", description, "no readable labels")
    return finding_check("labels_cover_every_cell", "tokens", description, findings, total)


def base_overlap_check(views: dict[str, RawSplit], audited: bool) -> Check:
    """Base ids in both splits (a leak), computed once. Strict files report the count (= 0) with each shared
    base's first example in both splits; audited files, a finding whose score is the share of test bases."""
    description = "no base scenario id in both splits"
    train, test = views["train"], views["test"]
    if train.base_scenario_ids is None or test.base_scenario_ids is None:
        return not_run("base_overlap", "methodology", description, "base ids unreadable")
    train_first = first_index(map(str, train.base_scenario_ids))
    test_first = first_index(map(str, test.base_scenario_ids))
    shared = [(base, train_first[base], j) for base, j in test_first.items() if base in train_first]
    if audited:
        bases = sorted(base for base, _, _ in shared)
        findings = (
            [(f"{len(bases)} base ids in both splits, e.g. {_examples(bases)}", len(bases))] if bases else []
        )
        return finding_check("base_overlap", "methodology", description, findings, max(len(test_first), 1))
    failures = [
        f"base {base} is in both {train.where('base_scenario_ids', i)} and {test.where('base_scenario_ids', j)}"
        for base, i, j in shared
    ]
    score = 1 - len(shared) / len(test_first) if test_first else 0.0
    return Check("base_overlap", "methodology", description, len(shared), score, failures, "= 0")


# ---- consistency: the summary file and the HRM layout (`paths.hrm`) against the raw files and params --------
#
# Critical, unscored checks: a summary whose costs differ cannot re-check the labels, and a layout that differs
# trains a model on data nobody validated.

HRM_ARRAYS = {  # name -> dtype of convert's output (docs/design.md, Data contract: HRM layout)
    "inputs": np.uint8,
    "labels": np.uint8,
    "puzzle_identifiers": np.int32,
    "puzzle_indices": np.int32,
    "group_indices": np.int32,
}
HRM_EXTRA_DTYPE = np.int32
HRM_METADATA_FIELDS = tuple(spec.HRM_METADATA_FIELDS)


def summary_check(
    dataset: RawDataset,
    facts: dict[str, ExampleFacts],
    cost_table: np.ndarray,
    params_cost_model: spec.CostModel,
    expected_min_route_length: int | None = None,
) -> Check:
    """The summary's grid, tokens, vehicles, counts and per-example routes equal the files' and params'.
    `cost_table`: the summary's, as the reading parsed it ([identifiers, vocab], checked there)."""
    name = spec.RAW_SUMMARY_FILE
    summary = dataset.summary
    problems: list[str] = []
    grid = summary["grid"]
    if (grid["rows"], grid["cols"], grid["seq_len"]) != (
        dataset.rows,
        dataset.cols,
        dataset.rows * dataset.cols,
    ):
        problems.append(
            f"{name}: grid = {shorten(str(grid))}, the split files have {dataset.rows} x {dataset.cols}"
        )
    token_table = [(entry["id"], entry["name"]) for entry in summary["tokens"]]
    if token_table != list(enumerate(spec.token_names())):
        problems.append(f"{name}: tokens differ from the token table of hrm/data/spec.py")
    if summary["identifiers"] != dataset.identifiers:
        problems.append(
            f"{name}: identifiers = {shorten(str(summary['identifiers']))} but {spec.RAW_IDENTIFIERS_FILE} has {shorten(str(dataset.identifiers))}"
        )
    model = summary["cost_model"]
    try:
        rebuilt = spec.CostModel.from_dict(model, source=f"{name}: cost_model").cost_table()
    except ValueError as err:
        problems.append(str(err))
        rebuilt = None
    if rebuilt is not None and not np.array_equal(rebuilt, cost_table):
        problems.append(f"{name}: cost_model.cost_table does not follow from cost_model.vehicles")
    if not np.array_equal(cost_table, params_cost_model.cost_table()):
        problems.append(
            f"{name}: cost_model differs from params.yaml generate.vehicles: the labels were made with other "
            "costs (run the generate stage again)"
        )
    summary_names = [vehicle["name"] for vehicle in model["vehicles"]]
    if ["<blank>", *summary_names] != dataset.identifiers:
        problems.append(
            f"{name}: cost_model.vehicles {shorten(str(summary_names))} do not match {spec.RAW_IDENTIFIERS_FILE}"
        )
    min_length = summary.get("params", {}).get("min_route_length")
    if expected_min_route_length is not None and min_length != expected_min_route_length:
        problems.append(
            f"{name}: params.min_route_length = {shorten(str(min_length))}, params.yaml has {expected_min_route_length}"
        )

    checked_items = len(problems) + 1
    for split_name in dataset.splits:
        checked_items += _summary_split_problems(dataset, facts[split_name], split_name, problems)
    return share_check(
        "summary_agrees",
        "consistency",
        "the summary's grid, tokens, cost model (= params), counts and per-example routes agree with the files",
        problems,
        checked_items,
    )


def _summary_split_problems(
    dataset: RawDataset, f: ExampleFacts, split_name: str, problems: list[str]
) -> int:
    """The summary's counts, per-example records and base endpoints of one split against the files; appends
    to `problems` and returns the number of example records compared."""
    name = spec.RAW_SUMMARY_FILE
    summary = dataset.summary
    split = dataset.splits[split_name]
    counts = summary["counts"].get(split_name, {})
    found = {"bases": split.num_groups, "examples": split.num_examples}
    for key, value in found.items():
        if counts.get(key) != value:
            problems.append(
                f"{name}: counts.{split_name}.{key} = {shorten(str(counts.get(key)))}, the files hold {value}"
            )
    records = summary["examples"][split_name]
    if len(records) != split.num_examples:
        problems.append(
            f"{name}: examples.{split_name} has {len(records)} entries, the files hold {split.num_examples}"
        )
        return 0
    for i, record in enumerate(records):
        where = f"{name}: examples.{split_name}[{i}]"
        if (
            record["base_scenario_id"] != split.base_scenario_ids[i]
            or record["vehicle"] != split.vehicle_types[i]
        ):
            problems.append(
                f"{where} is ({shorten(str(record['base_scenario_id']))}, {shorten(str(record['vehicle']))}) but "
                f"{split.where('base_scenario_ids', i)} / vehicle_types say ({shorten(str(split.base_scenario_ids[i]))}, {shorten(str(split.vehicle_types[i]))})"
            )
        elif record["route_length"] != int(f.route_length[i]):
            problems.append(
                f"{where}.route_length = {shorten(str(record['route_length']))} but {split.where('labels', i)} marks "
                f"{int(f.route_length[i])} cells"
            )
        elif f.route_valid[i] and record["route_cost"] != f.route_cost[i]:
            problems.append(
                f"{where}.route_cost = {shorten(str(record['route_cost']))} but {split.where('labels', i)}'s route costs "
                f"{f.route_cost[i]:.0f}"
            )
    problems.extend(_base_endpoint_problems(dataset, split_name))
    return len(records)


def _base_endpoint_problems(dataset: RawDataset, split_name: str) -> list[str]:
    records = dataset.summary.get("bases", {}).get(split_name)
    if records is None:
        return []
    split = dataset.splits[split_name]
    first_example = first_index(split.base_scenario_ids)
    problems = []
    for k, record in enumerate(records):
        i = first_example.get(record["base_scenario_id"])
        where = f"{spec.RAW_SUMMARY_FILE}: bases.{split_name}[{k}]"
        if i is None:
            problems.append(
                f"{where}: base {shorten(str(record['base_scenario_id']))} has no example in the split files"
            )
            continue
        grid = split.inputs[i]
        for key, token in (("start", spec.START), ("goal", spec.GOAL)):
            cell = record[key]
            if not (0 <= cell < grid.size and grid[cell] == token):
                problems.append(
                    f"{where}.{key} = {shorten(str(cell))} but that cell of {split.where('inputs', i)} is not the {key}"
                )
    return problems


def _load(path: Path, problems: list[str], npy: bool = False) -> Any:
    """The document or array at `path`, or None with the problem noted."""
    if not path.is_file():
        problems.append(f"{path}: missing (run the convert stage)")
        return None
    try:
        return read_npy(path) if npy else read_json(path, "run the convert stage")
    except UserError as err:
        problems.append(f"{path}: unreadable ({str(err).removeprefix(f'{path}: ')})")
    return None


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    index = np.argwhere(a != b)[0]
    return "[" + "][".join(str(int(i)) for i in index) + "]"


def _layout_split_problems(split: RawSplit, folder: Path, problems: list[str]) -> int:
    """One split folder of the HRM layout against the raw split: metadata, each array's dtype, shape and
    values, the base numbering; appends to `problems`, returns the number of items compared."""
    metadata = _load(folder / "dataset.json", problems)
    if metadata is not None:
        for key in HRM_METADATA_FIELDS:
            if metadata.get(key) != split.metadata[key]:
                problems.append(
                    f"{folder / 'dataset.json'}: {key} = {shown(metadata.get(key))} but "
                    f"{split.files['dataset']} has {shown(split.metadata[key])}"
                )
    expected_arrays = {
        "inputs": split.inputs,
        "labels": split.labels,
        "puzzle_identifiers": split.puzzle_identifiers,
        "puzzle_indices": split.puzzle_indices,
        "group_indices": split.group_indices,
        "vehicle_types": split.example_identifier,
    }
    for array_name, expected in expected_arrays.items():
        path = folder / f"all__{array_name}.npy"
        array = _load(path, problems, npy=True)
        if array is None:
            continue
        dtype = HRM_ARRAYS.get(array_name, HRM_EXTRA_DTYPE)
        if array.dtype != dtype:
            problems.append(f"{path}: dtype {array.dtype}, expected {np.dtype(dtype)}")
        if array.shape != expected.shape:
            problems.append(f"{path}: shape {list(array.shape)}, raw files give {list(expected.shape)}")
        elif not np.array_equal(array, expected):
            problems.append(
                f"{path}{_first_difference(array, expected)} differs from the raw "
                f"{split.files.get(array_name, split.files['puzzle_identifiers'])}"
            )
    path = folder / "all__base_scenario_ids.npy"
    bases = _load(path, problems, npy=True)
    if bases is not None:
        if bases.dtype != HRM_EXTRA_DTYPE or bases.shape != (split.num_examples,):
            problems.append(
                f"{path}: dtype {bases.dtype} shape {list(bases.shape)}, expected int32 [{split.num_examples}]"
            )
        else:
            # the same base <-> the same number, whatever numbering convert chose
            base_ids, numbers = split.base_scenario_ids, bases.tolist()
            pairs = set(zip(base_ids, numbers, strict=True))
            if len(pairs) != len(set(base_ids)) or len(pairs) != len(set(numbers)):
                problems.append(
                    f"{path}: does not number the bases of {split.files['base_scenario_ids']} one to one"
                )
    return 2 + len(expected_arrays)


def hrm_layout_check(dataset: RawDataset, hrm_dir: str | Path) -> Check:
    """Every array and metadata file of the HRM layout equals what the raw files say."""
    hrm_dir = Path(hrm_dir)
    problems: list[str] = []
    items = 0
    if not hrm_dir.is_dir():
        problems.append(f"{hrm_dir}: HRM layout folder not found (run the convert stage)")
    else:
        items += 2
        identifiers = _load(hrm_dir / "identifiers.json", problems)
        if identifiers is not None and identifiers != dataset.identifiers:
            problems.append(
                f"{hrm_dir / 'identifiers.json'}: {shorten(str(identifiers))} differs from {spec.RAW_IDENTIFIERS_FILE}"
            )
        routing_doc = _load(hrm_dir / spec.HRM_ROUTING_FILE, problems)
        if routing_doc is not None:
            expected = dict(dataset.summary["cost_model"], rows=dataset.rows, cols=dataset.cols)
            if routing_doc != expected:
                keys = sorted(
                    k for k in set(expected) | set(routing_doc) if expected.get(k) != routing_doc.get(k)
                )
                problems.append(
                    f"{hrm_dir / spec.HRM_ROUTING_FILE}: differs from the summary's cost_model + rows/cols at {keys}"
                )
        for split_name, split in dataset.splits.items():
            items += _layout_split_problems(split, hrm_dir / split_name, problems)
    return share_check(
        "hrm_layout_agrees",
        "consistency",
        f"the HRM layout in {hrm_dir} holds exactly the raw files' arrays, dtypes and metadata",
        problems,
        max(items, 1),
    )


# ---- the score -------------------------------------------------------------------------------------------


@dataclass
class ComplianceReport:
    checks: list[Check]
    weights: dict[str, float]
    threshold: float
    category_scores: dict[str, float]
    score: float
    figures: dict[str, Any]

    @property
    def critical_failures(self) -> list[Check]:
        return [check for check in self.checks if check.critical and not check.passed]

    @property
    def passed(self) -> bool:
        return self.score >= self.threshold and not self.critical_failures


def score(
    checks: list[Check], weights: dict[str, float], threshold: float, figures: dict[str, Any]
) -> ComplianceReport:
    """Category score = mean of its checks' scores; total = sum of weight x category score."""
    category_scores = {}
    for category in CATEGORIES:
        members = [check.score for check in checks if check.category == category]
        category_scores[category] = round(float(np.mean(members)), 6) if members else 0.0
    total = round(sum(weights[c] * category_scores[c] for c in CATEGORIES), 6)
    return ComplianceReport(checks, dict(weights), threshold, category_scores, total, figures)


def route_figures(
    dataset: RawDataset, facts: dict[str, ExampleFacts], min_route_length: int
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, split in dataset.splits.items():
        f = facts[name]
        figures[f"{name}_examples"] = split.num_examples
        figures[f"{name}_bases"] = len(set(split.base_scenario_ids))
        figures[f"{name}_route_length_min"] = int(f.route_length.min())
        figures[f"{name}_route_length_mean"] = round(float(f.route_length.mean()), 2)
        figures[f"{name}_route_length_max"] = int(f.route_length.max())
        costs = f.route_cost[np.isfinite(f.route_cost)]
        figures[f"{name}_route_cost_mean"] = round(float(costs.mean()), 2) if costs.size else 0.0
    for index, vehicle in enumerate(dataset.identifiers[1:], start=1):
        lengths = np.concatenate(
            [facts[n].route_length[s.example_identifier == index] for n, s in dataset.splits.items()]
        )
        figures[f"route_length_mean_{vehicle}"] = round(float(lengths.mean()), 2) if lengths.size else 0.0
    figures["min_route_length"] = min_route_length
    return figures


# ---- difficulty: how much search the dataset needs (issue 12) ---------------------------------------------

DETOUR_BINS = ((0, 0), (2, 2), (4, 6), (8, 14), (16, 30), (32, None))  # detour cells, inclusive


def _detour_summary(detours: np.ndarray, turns: np.ndarray, min_detour: int) -> dict[str, Any]:
    """generate's difficulty figures (`facts.detour_figures`) under the report's names, with DETOUR_BINS."""
    figures = detour_figures(detours.tolist(), turns.tolist(), min_detour)
    out: dict[str, Any] = {
        "examples": figures["examples"],
        "monotone_share": figures["monotone_share"],
        "detour_share": figures["detour_share"],
        "detour_mean": figures["mean_detour"],
        "detour_max": figures["max_detour"],
        "turns_mean": figures["mean_turns"],
    }
    for low, high in DETOUR_BINS:
        name = f"{low}" if low == high else f"{low}+" if high is None else f"{low}-{high}"
        out[f"detour_{name}"] = int(((detours >= low) & (high is None or detours <= high)).sum())
    return out


def _rule_check(name: str, description: str, found: float, required: float, failures: list[str]) -> Check:
    """A `generate.difficulty` share: scored by how close it comes, not critical."""
    score = 1.0 if required == 0 else min(1.0, found / required)
    return Check(
        name, "augmentation_quality", description, found, score, failures, f">= {required:g}", critical=False
    )


def difficulty_checks(
    dataset: RawDataset, facts: dict[str, ExampleFacts], rules: Any
) -> tuple[list[Check], dict[str, Any]]:
    """`generate.difficulty` (`rules`: generate.DifficultyParams) re-measured on the labels, with detour and
    turn figures per split and per vehicle. Not critical; an invalid route counts as no detour."""
    min_detour, min_detour_share = rules.min_detour, rules.min_detour_share
    min_distinct_routes, min_distinct_share = rules.min_distinct_routes, rules.min_distinct_share
    cols = dataset.cols
    figures: dict[str, Any] = {
        "rules": {"min_detour": min_detour, "min_distinct_routes": min_distinct_routes}
    }
    detour_failures, distinct_failures = [], []
    lowest_detour_share = lowest_distinct_share = 1.0
    per_vehicle: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for name, split in dataset.splits.items():
        detours, turns = facts[name].detours(cols), facts[name].turns()
        for i in range(split.num_examples):
            per_vehicle[split.vehicle_types[i]].append((int(detours[i]), int(turns[i])))
        summary = _detour_summary(detours, turns, min_detour)
        distinct = [len({split.labels[i].tobytes() for i in rows}) for rows in _group_rows(split)]
        wide = sum(d >= min_distinct_routes for d in distinct)
        summary["distinct_routes_share"] = round(wide / len(distinct), 6) if distinct else 0.0
        figures[name] = summary
        lowest_detour_share = min(lowest_detour_share, summary["detour_share"])
        lowest_distinct_share = min(lowest_distinct_share, summary["distinct_routes_share"])
        if summary["detour_share"] < min_detour_share:
            detour_failures.append(
                f"{split.files['labels']}: {summary['detour_share']:.4f} of routes have a detour >= {min_detour} "
                f"cells, params.yaml generate.difficulty.min_detour_share asks for {min_detour_share}"
            )
        if summary["distinct_routes_share"] < min_distinct_share:
            distinct_failures.append(
                f"{split.files['labels']}: {summary['distinct_routes_share']:.4f} of bases have >= "
                f"{min_distinct_routes} distinct routes, params.yaml generate.difficulty.min_distinct_share "
                f"asks for {min_distinct_share}"
            )
    figures["by_vehicle"] = {}
    for vehicle, values in per_vehicle.items():
        found = detour_figures([d for d, _ in values], [t for _, t in values], min_detour)
        figures["by_vehicle"][vehicle] = {
            "monotone_share": found["monotone_share"],
            "detour_mean": found["mean_detour"],
            "turns_mean": found["mean_turns"],
        }

    checks = [
        _rule_check(
            "detour_share",
            f"lowest share over the splits of routes with a detour >= {min_detour} cells (route longer than the "
            "Manhattan walk: the example needs search), generate.difficulty.min_detour_share",
            lowest_detour_share,
            min_detour_share,
            detour_failures,
        ),
        _rule_check(
            "distinct_routes_share",
            f"lowest share over the splits of bases whose vehicles take >= {min_distinct_routes} distinct "
            "routes, generate.difficulty.min_distinct_share",
            lowest_distinct_share,
            min_distinct_share,
            distinct_failures,
        ),
    ]
    return checks, figures
