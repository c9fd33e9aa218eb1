"""The data contract shared by every stage: tokens, road classes, vehicles, costs and file names.
All that decides a label lives here, so stages agree and the summary can carry it (`CostModel.to_dict`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

GRID_FORMAT_VERSION = 1

ROAD_CLASSES: tuple[str, ...] = ("alley", "street", "avenue", "highway")
CONGESTION_LEVELS: tuple[str, ...] = ("free", "light", "heavy", "jam")

# Token ids. 0 is PAD (HRM's pad_id); it never occurs inside a grid.
PAD = 0
BUILDING = 1
PARK = 2
WATER = 3
ROAD_BASE = 4  # road token = ROAD_BASE + class_index * len(CONGESTION_LEVELS) + congestion_level
CLOSED = ROAD_BASE + len(ROAD_CLASSES) * len(CONGESTION_LEVELS)  # 20: closed road, barred to all
START = CLOSED + 1  # 21
GOAL = CLOSED + 2  # 22
ROUTE = CLOSED + 3  # 23: labels only, the route's cells between start and goal
VOCAB_SIZE = ROUTE + 1  # 24

NON_ROAD_TOKENS = (BUILDING, PARK, WATER)
INPUT_TOKENS = tuple(range(1, ROUTE))  # tokens an input grid may hold
LABEL_TOKENS = tuple(range(1, VOCAB_SIZE))  # tokens a label grid may hold

# Start and goal are enterable by every vehicle at cost 0: the route cost sums the cells in between.
ENDPOINT_COST = 0
BLOCKED = -1  # entry in a cost table: the vehicle may not enter this token


def road_token(road_class: str, congestion: int) -> int:
    """Token of a road cell: both its class and its congestion level, so a jam never hides the road."""
    return ROAD_BASE + ROAD_CLASSES.index(road_class) * len(CONGESTION_LEVELS) + int(congestion)


def token_names() -> list[str]:
    """Human-readable name of every token id, index = id."""
    roads = [f"{c}_{g}" for c in ROAD_CLASSES for g in CONGESTION_LEVELS]
    names = ["pad", "building", "park", "water", *roads, "closed", "start", "goal", "route"]
    assert len(names) == VOCAB_SIZE
    return names


@dataclass(frozen=True)
class VehicleProfile:
    """Access rules and costs of one vehicle; `class_cost[c] is None` means barred from class c."""

    name: str
    original_id: str
    class_cost: dict[str, int | None]
    congestion_cost: tuple[int, ...]

    def token_costs(self) -> np.ndarray:
        """Cost of entering each token (BLOCKED where barred), shape [VOCAB_SIZE], int64."""
        costs = np.full(VOCAB_SIZE, BLOCKED, dtype=np.int64)
        for class_name, base in self.class_cost.items():
            if base is not None:
                for level, extra in enumerate(self.congestion_cost):
                    costs[road_token(class_name, level)] = base + extra
        costs[[START, GOAL]] = ENDPOINT_COST
        return costs


def parse_vehicles(
    raw: list[dict[str, Any]], source: str = "params.yaml:generate.vehicles"
) -> list[VehicleProfile]:
    """Vehicle profiles from params, checked: positive integer costs, known classes, 4 congestion costs."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: must be a non-empty list of vehicles")
    vehicles = []
    for index, entry in enumerate(raw):
        where = f"{source}[{index}]"
        try:
            name, original_id = str(entry["name"]), str(entry["original_id"])
            class_cost = dict(entry["class_cost"])
            congestion_cost = tuple(int(c) for c in entry["congestion_cost"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: needs name, original_id, class_cost, congestion_cost ({err})"
            ) from err
        unknown = set(class_cost) - set(ROAD_CLASSES)
        if unknown:
            raise ValueError(f"{where}.class_cost: unknown road classes {sorted(unknown)}")
        for class_name in ROAD_CLASSES:
            cost = class_cost.get(class_name)
            if cost is not None and (not isinstance(cost, int) or cost <= 0):
                raise ValueError(f"{where}.class_cost.{class_name}: must be a positive integer or null")
        if len(congestion_cost) != len(CONGESTION_LEVELS) or min(congestion_cost) < 0:
            raise ValueError(f"{where}.congestion_cost: needs {len(CONGESTION_LEVELS)} non-negative integers")
        vehicles.append(VehicleProfile(name, original_id, class_cost, congestion_cost))
    return vehicles


@dataclass(frozen=True)
class CostModel:
    """Tokens plus vehicles: all that is needed to re-check a label. Puzzle identifier i+1 = vehicles[i]."""

    vehicles: tuple[VehicleProfile, ...]

    def cost_table(self) -> np.ndarray:
        """[1 + n_vehicles, VOCAB_SIZE] int64; row = puzzle identifier (row 0, '<blank>', blocks all)."""
        blank = np.full(VOCAB_SIZE, BLOCKED, dtype=np.int64)
        return np.stack([blank, *(vehicle.token_costs() for vehicle in self.vehicles)])

    def identifiers(self) -> list[str]:
        """HRM's identifiers.json: id 0 is '<blank>', then the vehicles."""
        return ["<blank>"] + [v.name for v in self.vehicles]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, written into the summary file and beside the HRM layout (routing.json)."""
        return {
            "format_version": GRID_FORMAT_VERSION,
            "tokens": token_names(),
            "road_classes": list(ROAD_CLASSES),
            "congestion_levels": list(CONGESTION_LEVELS),
            "move_rule": "4-neighbour moves (up, down, left, right)",
            "cost_rule": (
                "route cost = sum of the entering cost of every cell after the start and before the goal; "
                "entering a road cell costs class_cost[class] + congestion_cost[level] for the vehicle; "
                "null class_cost, closed roads and non-road cells are barred; start and goal cost 0"
            ),
            "vehicles": [
                {
                    "puzzle_identifier": i + 1,
                    "name": v.name,
                    "original_id": v.original_id,
                    "class_cost": {c: v.class_cost.get(c) for c in ROAD_CLASSES},
                    "congestion_cost": list(v.congestion_cost),
                }
                for i, v in enumerate(self.vehicles)
            ],
            "cost_table": self.cost_table().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "cost model") -> CostModel:
        return cls(tuple(parse_vehicles(data["vehicles"], source=f"{source}: vehicles")))


# ---- file names of the original tool (seed report, section 3) ----
RAW_PREFIX = "city_routing_paper"
SPLITS = ("train", "test")
RAW_ARRAY_FIELDS = (
    "inputs",
    "labels",
    "puzzle_identifiers",
    "puzzle_indices",
    "group_indices",
    "base_scenario_ids",
    "vehicle_types",
)


def raw_split_files(split: str) -> dict[str, str]:
    """The 8 per-split file names, keyed 'dataset' and each array field."""
    fields = {field: f"{RAW_PREFIX}_{split}_all__{field}.json" for field in RAW_ARRAY_FIELDS}
    return {"dataset": f"{RAW_PREFIX}_{split}_dataset.json"} | fields


RAW_IDENTIFIERS_FILE = f"{RAW_PREFIX}_identifiers.json"
RAW_SUMMARY_FILE = f"{RAW_PREFIX}_dataset_summary.json"


def raw_file_names() -> list[str]:
    """All 18 file names."""
    names = [name for split in SPLITS for name in raw_split_files(split).values()]
    return names + [RAW_IDENTIFIERS_FILE, RAW_SUMMARY_FILE]


# HRM's PuzzleDatasetMetadata (dataset.json): field -> accepted JSON types. Shared by every reader.
HRM_METADATA_FIELDS: dict[str, type | tuple[type, ...]] = {
    "pad_id": int,
    "ignore_label_id": (int, type(None)),
    "blank_identifier_id": int,
    "vocab_size": int,
    "seq_len": int,
    "num_puzzle_identifiers": int,
    "total_groups": int,
    "mean_puzzle_examples": (int, float),
    "sets": list,
}

HRM_SET = "all"  # the one set of every split


def hrm_metadata(
    seq_len: int,
    num_identifiers: int,
    total_groups: int,
    mean_examples: float = 1.0,
    vocab_size: int = VOCAB_SIZE,
    ignore_label_id: int | None = PAD,
) -> dict[str, Any]:
    """HRM's PuzzleDatasetMetadata: generate's dataset.json (plus rows/cols) and convert's."""
    return {
        "pad_id": PAD,
        "ignore_label_id": ignore_label_id,
        "blank_identifier_id": 0,
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "num_puzzle_identifiers": num_identifiers,
        "total_groups": total_groups,
        "mean_puzzle_examples": mean_examples,
        "sets": [HRM_SET],
    }


# HRM layout extras written by convert beside the standard arrays.
HRM_ROUTING_FILE = "routing.json"  # CostModel.to_dict() + rows/cols, at the dataset root
HRM_EXTRA_ARRAYS = ("base_scenario_ids", "vehicle_types")  # all__{name}.npy per split
