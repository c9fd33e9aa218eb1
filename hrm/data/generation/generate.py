"""The generate stage: base scenarios x vehicles -> the 18 raw JSON files.

Base i of a split is drawn from `StableRng(seed, (split_index, i, attempt))`, attempts 0, 1, 2, ... until one
passes every check (`try_attempt`), so it depends on those three numbers alone. Difficulty shares
(`generate.difficulty`) are met by quota: base i must hold `quota(i)` examples with a detour >= `min_detour`
(and `min_distinct_routes` distinct routes where its quota says so), enough to keep bases 0..i at the share
given what bases 0..i-1 reached: every prefix of a split meets the share, more bases change no earlier one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from hrm import io
from hrm.config import ConfigError, load_params, section
from hrm.data import routing, spec
from hrm.data.facts import detour_figures
from hrm.data.generation.city import City, CityParams, NoEndpoints, build_city
from hrm.data.rng import StableRng

GENERATOR_VERSION = "2.0.0"
SPLIT_INDEX = {split: index for index, split in enumerate(spec.SPLITS)}  # spawn key part: train 0, test 1
# the params key behind each difficulty rejection, named when a base cannot meet it
DIFFICULTY_RULES = {
    "detour": "generate.difficulty.min_detour_share / min_detour",
    "distinct_routes": "generate.difficulty.min_distinct_share / min_distinct_routes",
}
REJECTION_REASONS = ("no_endpoints", "unreachable", "too_short", "tie", "identical_routes", *DIFFICULTY_RULES)
DETOUR_RULE = (
    "detour = route_length - (manhattan(start, goal) + 1) cells; 0 = monotone route (every move towards the goal); "
    "always even"
)
LENGTH_RULE = "route_length = number of cells on the route, start and goal included (moves + 1)"


@dataclass(frozen=True)
class DifficultyParams:
    """`generate.difficulty` in params.yaml: minimum shares the city must reach, enforced per base by quota."""

    min_detour: int  # cells of detour (even, >= 2) for an example to count as "needs a detour"
    min_detour_share: float  # share of each split's examples with a detour >= min_detour
    min_distinct_routes: int  # distinct routes among a base's vehicles ...
    min_distinct_share: float  # ... reached in at least this share of each split's bases

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], n_vehicles: int, rows: int, cols: int, min_route_length: int, source: str
    ) -> DifficultyParams:
        """The rules between values the schema (`hrm.config.load_params`) cannot state, each a ConfigError."""
        where = f"{source}: generate.difficulty"
        min_detour, distinct = int(raw["min_detour"]), int(raw["min_distinct_routes"])
        detour_share, distinct_share = float(raw["min_detour_share"]), float(raw["min_distinct_share"])
        if min_detour % 2:
            raise ConfigError(
                f"{where}.min_detour must be even (a detour on a 4-neighbour grid is even: every step away "
                f"from the goal is stepped back), got {min_detour}"
            )
        # a route holds at most rows*cols cells and spans >= min_route_length - 1 moves of Manhattan distance
        longest = rows * cols - min_route_length
        if detour_share > 0 and min_detour > longest:
            raise ConfigError(
                f"{where}.min_detour = {min_detour} is longer than a {rows}x{cols} map allows with routes of "
                f">= {min_route_length} cells (at most {longest} detour cells)"
            )
        if distinct > n_vehicles:
            raise ConfigError(
                f"{where}.min_distinct_routes must be at most the {n_vehicles} vehicles "
                f"(generate.vehicles), got {distinct}"
            )
        return cls(min_detour, detour_share, distinct, distinct_share)

    def quota(self, share: float, index: int, per_base: int, achieved: int) -> int:
        """Items base `index` must add so that bases 0..index hold `share` of their items (`per_base` a base),
        given `achieved` in bases 0..index-1. Exact rationals: the same on every machine."""
        return max(0, math.ceil(Fraction(str(share)) * per_base * (index + 1)) - achieved)

    def detour_quota(self, index: int, n_vehicles: int, achieved: int) -> int:
        return self.quota(self.min_detour_share, index, n_vehicles, achieved)

    def distinct_quota(self, index: int, achieved: int) -> int:
        """min_distinct_routes when base `index` must reach it, else 0."""
        return self.min_distinct_routes if self.quota(self.min_distinct_share, index, 1, achieved) else 0


@dataclass(frozen=True)
class GenerateSettings:
    """`generate` in params.yaml, checked."""

    seed: int
    rows: int
    cols: int
    bases: dict[str, int]
    min_route_length: int
    max_attempts: int
    count_cap: int
    cost_model: spec.CostModel
    city: CityParams
    difficulty: DifficultyParams
    raw_params: dict[str, Any]

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str = "params.yaml") -> GenerateSettings:
        """`params` already checked by the schema; the city and the difficulty check cross-field rules."""
        raw = section(params, "generate", source)
        try:
            cost_model = spec.CostModel(
                tuple(spec.parse_vehicles(raw["vehicles"], f"{source}:generate.vehicles"))
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err
        city = CityParams.from_dict(raw["city"], str(source))
        rows, cols, min_route_length = int(raw["rows"]), int(raw["cols"]), int(raw["min_route_length"])
        difficulty = DifficultyParams.from_dict(
            raw["difficulty"], len(cost_model.vehicles), rows, cols, min_route_length, str(source)
        )
        return cls(
            seed=int(raw["seed"]),
            rows=rows,
            cols=cols,
            bases={"train": int(raw["train_bases"]), "test": int(raw["test_bases"])},
            min_route_length=min_route_length,
            max_attempts=int(raw["max_attempts"]),
            count_cap=int(raw["count_cap"]),
            cost_model=cost_model,
            city=city,
            difficulty=difficulty,
            raw_params=raw,
        )


@dataclass
class Rejections:
    """Why attempts were thrown away. `tie_by_vehicle` counts attempts whose first failure was that vehicle's tie."""

    by_reason: Counter = field(default_factory=Counter)
    tie_by_vehicle: Counter = field(default_factory=Counter)
    attempts: int = 0

    def to_dict(self, kept: int) -> dict[str, Any]:
        rejected = self.attempts - kept
        ties = self.by_reason.get("tie", 0)
        return {
            "attempts": self.attempts,
            "kept": kept,
            "rejected": rejected,
            "rejected_share": round(rejected / self.attempts, 6) if self.attempts else 0.0,
            "by_reason": {reason: self.by_reason.get(reason, 0) for reason in REJECTION_REASONS},
            "tie_share_of_attempts": round(ties / self.attempts, 6) if self.attempts else 0.0,
            "tie_by_vehicle": dict(sorted(self.tie_by_vehicle.items())),
            "check_order": "per attempt: endpoints, then each vehicle in puzzle-id order: reachable, length, "
            "unique; then the base: routes not all identical, detour quota, distinct-routes quota",
        }


@dataclass(frozen=True)
class Base:
    """A kept base scenario and its one optimal route per vehicle."""

    base_id: str
    spawn_key: tuple[int, int, int]
    city: City
    routes: tuple[routing.RouteSolution, ...]  # vehicle order


def _route_distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """1 - Jaccard overlap of two routes' cell sets: 0 = the same route, 1 = no shared cell."""
    set_a, set_b = set(a), set(b)
    return 1.0 - len(set_a & set_b) / len(set_a | set_b)


def _difficulty(settings: GenerateSettings, routes: tuple[routing.RouteSolution, ...]) -> tuple[int, int]:
    """(routes with a detour >= difficulty.min_detour, distinct routes) of one base."""
    min_detour = settings.difficulty.min_detour
    detours = sum(routing.detour_cells(route.path, settings.cols) >= min_detour for route in routes)
    return detours, len({route.path for route in routes})


def try_attempt(
    settings: GenerateSettings,
    cost_table: np.ndarray,
    shared_tokens: np.ndarray,
    key: tuple[int, int, int],
    need_detours: int = 0,
    need_distinct: int = 0,
) -> tuple[City | None, tuple[routing.RouteSolution, ...], str | None, str | None]:
    """One attempt: (city, routes, None, None) when kept, else (city?, (), reason, vehicle that failed).

    need_detours: examples of this base that must have a detour >= difficulty.min_detour;
    need_distinct: distinct routes the base must have (0 = no requirement)."""
    rng = StableRng(settings.seed, key)
    try:
        city = build_city(
            rng, settings.rows, settings.cols, settings.city, shared_tokens, settings.min_route_length - 1
        )
    except NoEndpoints:
        return None, (), "no_endpoints", None
    routes = []
    for vehicle_index, vehicle in enumerate(settings.cost_model.vehicles):
        costs = routing.cell_costs(city.grid, cost_table[vehicle_index + 1])
        solution = routing.solve(
            costs, city.start, city.goal, settings.rows, settings.cols, settings.count_cap
        )
        if solution.cost is None:
            return city, (), "unreachable", vehicle.name
        if len(solution.path) < settings.min_route_length:
            return city, (), "too_short", vehicle.name
        if solution.optimal_routes > 1:
            return city, (), "tie", vehicle.name
        routes.append(solution)
    detours, distinct = _difficulty(settings, tuple(routes))
    if distinct == 1:
        return city, (), "identical_routes", None
    if detours < need_detours:
        return city, (), "detour", None
    if distinct < need_distinct:
        return city, (), "distinct_routes", None
    return city, tuple(routes), None, None


def generate_bases(
    settings: GenerateSettings, progress: bool = True
) -> tuple[dict[str, list[Base]], Rejections]:
    """All kept bases per split, in base-index order, and the rejection statistics."""
    from tqdm import tqdm

    cost_table = settings.cost_model.cost_table()
    shared_tokens = (cost_table[1:] >= 0).all(axis=0)
    shared_tokens[[spec.START, spec.GOAL]] = False  # endpoints are placed on roads, not on other endpoints
    rejections = Rejections()
    bases: dict[str, list[Base]] = {}
    total = sum(settings.bases.values())
    with tqdm(total=total, desc="generate", unit="base", file=sys.stderr, disable=not progress) as bar:
        for split in spec.SPLITS:
            split_bases = []
            detours_so_far = distinct_so_far = 0
            for base_index in range(settings.bases[split]):
                reasons: Counter = Counter()
                need_detours = settings.difficulty.detour_quota(
                    base_index, len(settings.cost_model.vehicles), detours_so_far
                )
                need_distinct = settings.difficulty.distinct_quota(base_index, distinct_so_far)
                for attempt in range(settings.max_attempts):
                    key = (SPLIT_INDEX[split], base_index, attempt)
                    rejections.attempts += 1
                    city, routes, reason, vehicle = try_attempt(
                        settings, cost_table, shared_tokens, key, need_detours, need_distinct
                    )
                    if reason is None:
                        split_bases.append(Base(f"{split}-{base_index:04d}", key, city, routes))
                        detours, distinct = _difficulty(settings, routes)
                        detours_so_far += detours
                        distinct_so_far += distinct >= settings.difficulty.min_distinct_routes
                        break
                    reasons[reason] += 1
                    rejections.by_reason[reason] += 1
                    if reason == "tie":
                        rejections.tie_by_vehicle[vehicle] += 1
                else:
                    rules = [
                        f"{DIFFICULTY_RULES[r]} ({reasons[r]} rejections)"
                        for r in DIFFICULTY_RULES
                        if reasons[r]
                    ]
                    raise io.UserError(
                        f"generate: base {split}-{base_index:04d} found no acceptable scenario in "
                        f"{settings.max_attempts} attempts (rejections: {dict(reasons)}; it needed "
                        f"{need_detours} examples with a detour >= {settings.difficulty.min_detour} cells and "
                        f"{need_distinct or 'any number of'} distinct routes)"
                        + (f"; difficulty rules not met: {', '.join(rules)}" if rules else "")
                        + "; raise generate.max_attempts or loosen generate.difficulty / "
                        "generate.min_route_length / generate.city"
                    )
                bar.update(1)
            bases[split] = split_bases
    return bases, rejections


def _examples(
    settings: GenerateSettings, bases: list[Base]
) -> list[tuple[Base, spec.VehicleProfile, routing.RouteSolution]]:
    """(base, vehicle, route) of every example of a split, in file order."""
    vehicles = settings.cost_model.vehicles
    return [
        (base, vehicle, route) for base in bases for vehicle, route in zip(vehicles, base.routes, strict=True)
    ]


def _split_files(settings: GenerateSettings, split: str, bases: list[Base]) -> dict[str, Any]:
    """The 8 per-split JSON documents, keyed like `spec.raw_split_files`."""
    examples = _examples(settings, bases)
    n_vehicles = len(settings.cost_model.vehicles)
    n_examples = len(examples)
    metadata = spec.hrm_metadata(settings.rows * settings.cols, n_vehicles + 1, len(bases))
    return {
        "dataset": metadata | {"rows": settings.rows, "cols": settings.cols},
        "inputs": [base.city.grid.tolist() for base, _, _ in examples],
        "labels": [routing.mark_route(base.city.grid, route.path).tolist() for base, _, route in examples],
        "puzzle_identifiers": [v + 1 for _ in bases for v in range(n_vehicles)],
        "puzzle_indices": list(range(n_examples + 1)),
        "group_indices": list(range(0, n_examples + 1, n_vehicles)),
        "base_scenario_ids": [base.base_id for base, _, _ in examples],
        "vehicle_types": [vehicle.name for _, vehicle, _ in examples],
    }


def _distinct_histogram(bases: list[Base], n_vehicles: int) -> dict[str, int]:
    distinct = [len({route.path for route in base.routes}) for base in bases]
    return {str(k): distinct.count(k) for k in range(1, n_vehicles + 1)}


def _diversity(bases: list[Base], vehicle_names: list[str]) -> dict[str, Any]:
    n_vehicles = len(vehicle_names)
    identical_pairs = {
        f"{vehicle_names[a]}={vehicle_names[b]}": sum(
            base.routes[a].path == base.routes[b].path for base in bases
        )
        for a, b in combinations(range(n_vehicles), 2)
    }
    histogram = _distinct_histogram(bases, n_vehicles)
    pair_distances = [
        _route_distance(a.path, b.path) for base in bases for a, b in combinations(base.routes, 2)
    ]
    return {
        "bases": len(bases),
        "bases_with_all_routes_distinct": histogram[str(n_vehicles)],
        "distinct_routes_per_base_histogram": histogram,
        "bases_where_two_vehicles_share_the_route": identical_pairs,
        # math.fsum is exactly rounded: the same figure on every CPU, unlike a SIMD-order float reduction
        "mean_pairwise_route_distance": round(math.fsum(pair_distances) / len(pair_distances), 6)
        if pair_distances
        else 0.0,
        "route_distance_rule": "1 - |A & B| / |A | B| over the cell sets of two vehicles' routes of one base",
    }


def _rule(required: float, found: float, **setting: int) -> dict[str, Any]:
    return {"required": required, "found": found, "met": found >= required, **setting}


def difficulty_stats(
    settings: GenerateSettings, bases: list[Base], examples: list[dict[str, Any]]
) -> dict[str, Any]:
    """How much search a split needs (its `_example_records`): detours (overall and per vehicle), turns,
    distinct routes per base, and each difficulty rule's required and found share."""
    rule = settings.difficulty
    n_vehicles = len(settings.cost_model.vehicles)

    def figures(records: list[dict[str, Any]]) -> dict[str, Any]:
        return detour_figures([r["detour"] for r in records], [r["turns"] for r in records], rule.min_detour)

    overall = figures(examples)
    distinct = [len({r.path for r in base.routes}) >= rule.min_distinct_routes for base in bases]
    distinct_share = round(sum(distinct) / len(bases), 6) if bases else 0.0
    return {
        **overall,
        "distinct_routes_per_base_histogram": _distinct_histogram(bases, n_vehicles),
        "distinct_routes_share": distinct_share,
        "by_vehicle": {
            vehicle.name: figures(examples[v::n_vehicles])
            for v, vehicle in enumerate(settings.cost_model.vehicles)
        },
        "rules": {
            "min_detour_share": _rule(
                rule.min_detour_share, overall["detour_share"], min_detour=rule.min_detour
            ),
            "min_distinct_share": _rule(
                rule.min_distinct_share, distinct_share, min_distinct_routes=rule.min_distinct_routes
            ),
        },
    }


def _example_records(settings: GenerateSettings, bases: list[Base]) -> list[dict[str, Any]]:
    """The summary's record of every example of a split: base, vehicle, route length and cost, hour, detour, turns."""
    return [
        {
            "base_scenario_id": base.base_id,
            "vehicle": vehicle.name,
            "route_length": len(route.path),
            "route_cost": route.cost,
            "hour": base.city.hour,
            "detour": routing.detour_cells(route.path, settings.cols),
            "turns": routing.turns(route.path),
        }
        for base, vehicle, route in _examples(settings, bases)
    ]


def _length_stats(values: list[int]) -> dict[str, float]:
    array = np.array(values, dtype=np.int64)
    return {
        "min": int(array.min()),
        "mean": round(float(array.mean()), 3),
        "median": float(np.median(array)),
        "max": int(array.max()),
    }


def _base_records(bases: list[Base]) -> list[dict[str, Any]]:
    """The summary's record of every base of a split: its spawn key, hour, start and goal."""
    return [
        {
            "base_scenario_id": base.base_id,
            "spawn_key": list(base.spawn_key),
            "hour": base.city.hour,
            "start": base.city.start,
            "goal": base.city.goal,
        }
        for base in bases
    ]


def build_summary(
    settings: GenerateSettings, bases: dict[str, list[Base]], rejections: Rejections
) -> dict[str, Any]:
    """The summary file: everything needed to re-check every label without this code."""
    vehicles = settings.cost_model.vehicles
    per_split: dict[str, dict[str, Any]] = {}
    for split, split_bases in bases.items():
        examples = _example_records(settings, split_bases)
        n = len(split_bases)
        for key, value in (
            (
                "counts",
                {"bases": n, "examples": n * len(vehicles), "puzzles": n * len(vehicles), "groups": n},
            ),
            ("diversity", _diversity(split_bases, [v.name for v in vehicles])),
            ("difficulty", difficulty_stats(settings, split_bases, examples)),
            ("hours", Counter(b.city.hour for b in split_bases).most_common()),
            ("bases", _base_records(split_bases)),
            ("examples", examples),
        ):
            per_split.setdefault(key, {})[split] = value
    all_bases = [base for split_bases in bases.values() for base in split_bases]
    length_by_vehicle = {
        vehicle.name: _length_stats([len(base.routes[index].path) for base in all_bases])
        for index, vehicle in enumerate(vehicles)
    }
    cost_model = settings.cost_model.to_dict()
    return {
        "generator": {"name": "hrm.data.generate", "version": GENERATOR_VERSION},
        "params": settings.raw_params,
        "seeds": {
            "root_seed": settings.seed,
            "stream": "numpy SeedSequence(entropy=root_seed, spawn_key=(split_index, base_index, attempt)) "
            "-> PCG64 raw 64-bit words (hrm.data.rng.StableRng)",
            "split_index": SPLIT_INDEX,
        },
        "grid": {"rows": settings.rows, "cols": settings.cols, "seq_len": settings.rows * settings.cols},
        "tokens": [{"id": token, "name": name} for token, name in enumerate(spec.token_names())],
        "cost_model": cost_model,
        "move_rule": cost_model["move_rule"],
        "cost_rule": cost_model["cost_rule"],
        "length_rule": LENGTH_RULE,
        "detour_rule": DETOUR_RULE,
        "label_rule": "label = input with every route cell between start and goal set to the route token",
        "acceptance_rule": (
            f"every vehicle reaches the goal, each optimum is unique (optimal routes counted, capped at "
            f"{settings.count_cap}), every route_length >= {settings.min_route_length}, routes not all identical; "
            f"per split, >= {settings.difficulty.min_detour_share} of examples have a detour >= "
            f"{settings.difficulty.min_detour} cells and >= {settings.difficulty.min_distinct_share} of bases have "
            f">= {settings.difficulty.min_distinct_routes} distinct routes (quotas spread evenly over the bases)"
        ),
        "vehicle_original_ids": {vehicle.name: vehicle.original_id for vehicle in vehicles},
        "identifiers": settings.cost_model.identifiers(),
        "rejections": rejections.to_dict(kept=len(all_bases)),
        "route_length_by_vehicle": length_by_vehicle,
        **per_split,
    }


def render_files(
    settings: GenerateSettings, bases: dict[str, list[Base]], rejections: Rejections
) -> dict[str, bytes]:
    """File name -> canonical JSON bytes, all 18."""
    files: dict[str, bytes] = {}
    for split in spec.SPLITS:
        documents = _split_files(settings, split, bases[split])
        for kind, name in spec.raw_split_files(split).items():
            files[name] = io.dumps_json(documents[kind]).encode("utf-8")
    files[spec.RAW_IDENTIFIERS_FILE] = io.dumps_json(settings.cost_model.identifiers()).encode("utf-8")
    summary = build_summary(settings, bases, rejections)
    files[spec.RAW_SUMMARY_FILE] = io.dumps_json(summary, indent=1).encode("utf-8")
    return files


def generate(
    params: dict[str, Any], out_dir: str | Path, progress: bool = True, source: str = "params.yaml"
) -> dict[str, Any]:
    """Generate the dataset into `out_dir` (built beside it, swapped in at the end). Returns the summary."""
    try:
        settings = GenerateSettings.from_params(params, source)
    except ConfigError as err:
        raise io.UserError(str(err)) from err
    bases, rejections = generate_bases(settings, progress=progress)
    files = render_files(settings, bases, rejections)
    with io.staged_directory(out_dir) as staging:
        readable_folder(staging)
        for name, data in files.items():
            (staging / name).write_bytes(data)
    return io_summary(files)


def readable_folder(path: Path) -> None:
    """mkdtemp makes staging folders private (0700); the published folder gets the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)


def io_summary(files: dict[str, bytes]) -> dict[str, Any]:
    """The summary document back, plus the sha256 of every file (for logs and the determinism check)."""
    summary = json.loads(files[spec.RAW_SUMMARY_FILE])
    summary["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    return summary


def run(params_path: str | Path = "params.yaml", progress: bool = True) -> dict[str, Any]:
    """Stage entry point: read params, write `paths.raw`."""
    try:
        params = load_params(params_path)
        out_dir = section(params, "paths", params_path)["raw"]
    except ConfigError as err:
        raise io.UserError(str(err)) from err
    return generate(params, out_dir, progress=progress, source=str(params_path))
