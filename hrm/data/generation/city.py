"""One base scenario: a city map, its traffic at one hour of the day, a few closures, a start and a goal.

The map: avenues (one per axis may be a limited-access highway), a street grid with irregular blocks, alleys,
parks, sometimes a river with a few bridges. What makes the way need search (issue 12): sometimes a barrier
of closures across the direct corridor and a congestion hotspot midway. Traffic: hour x road class x hotspots
plus noise, cut into 4 congestion levels. Every draw comes from one `StableRng` and loads are integer
arithmetic, so the same seed gives the same map on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import numpy as np

from hrm.config import ConfigError
from hrm.data import spec
from hrm.data.rng import StableRng

NO_ROAD = -1
ALLEY, STREET, AVENUE, HIGHWAY = (
    spec.ROAD_CLASSES.index(c) for c in ("alley", "street", "avenue", "highway")
)
PAIRS = ("avenue_spacing", "block_size", "closures", "barrier_margin", "hotspots", "hotspot_radius")


@dataclass(frozen=True)
class CityParams:
    """`generate.city` in params.yaml; see the comments there."""

    avenue_spacing: tuple[int, int]
    block_size: tuple[int, int]
    highway_probability: float
    street_gap_probability: float
    alley_probability: float
    park_probability: float
    river_probability: float
    street_bridge_probability: float
    avenue_bridge_probability: float
    closures: tuple[int, int]
    barrier_probability: float
    barrier_margin: tuple[int, int]
    corridor_hotspot_probability: float
    hotspots: tuple[int, int]
    hotspot_radius: tuple[int, int]
    traffic_by_hour: tuple[int, ...]
    class_traffic: tuple[int, ...]  # percent, in ROAD_CLASSES order
    congestion_thresholds: tuple[int, int, int]
    congestion_jitter: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "params.yaml") -> CityParams:
        """`generate.city` already checked by the schema (`hrm.config.load_params`); left here: the rules
        between values, each a ConfigError naming the key. `int()`/`float()` only normalise."""
        where = f"{source}: generate.city"
        thresholds = tuple(int(t) for t in raw["congestion_thresholds"])
        if list(thresholds) != sorted(thresholds):
            raise ConfigError(
                f"{where}.congestion_thresholds must be in increasing order (each >= the one before: "
                f"free | light | heavy | jam), got {raw['congestion_thresholds']!r}"
            )
        values: dict[str, Any] = {}
        for key in (f.name for f in fields(cls)):
            if key.endswith("_probability"):
                values[key] = float(raw[key])
            elif key in PAIRS:
                low, high = (int(v) for v in raw[key])
                if low > high:
                    raise ConfigError(f"{where}.{key} must be [min, max] with min <= max, got {raw[key]!r}")
                values[key] = (low, high)
        return cls(
            **values,
            traffic_by_hour=tuple(int(h) for h in raw["traffic_by_hour"]),
            class_traffic=tuple(int(raw["class_traffic"][c]) for c in spec.ROAD_CLASSES),
            congestion_thresholds=(thresholds[0], thresholds[1], thresholds[2]),
            congestion_jitter=int(raw["congestion_jitter"]),
        )


@dataclass(frozen=True)
class City:
    """A base scenario. `grid` is the model input (flat tokens); the rest explains it."""

    grid: np.ndarray  # [rows*cols] int64 tokens, start and goal included
    road_class: np.ndarray  # [rows, cols] class index, NO_ROAD elsewhere (closures keep their class)
    congestion: np.ndarray  # [rows, cols] level 0..3 on roads, 0 elsewhere
    hour: int
    start: int  # flat index
    goal: int


class NoEndpoints(Exception):
    """No start/goal pair far enough apart on roads every vehicle may use: the attempt is rejected."""


def _line_positions(rng: StableRng, size: int, spacing: tuple[int, int]) -> list[int]:
    """Avenue positions along one axis: a random first offset, then random gaps, never on the border."""
    positions = []
    position = rng.integer(2, max(3, spacing[0] // 2 + 2))
    while position <= size - 3:
        positions.append(position)
        position += rng.integer(spacing[0], spacing[1] + 1)
    return positions


def _street_positions(rng: StableRng, majors: list[int], size: int, block: tuple[int, int]) -> list[int]:
    """Streets in every gap between avenues (and the borders), separated by blocks of random size."""
    streets = []
    for low, high in pairwise([-1, *majors, size]):
        position = low + rng.integer(block[0], block[1] + 1) + 1
        while position <= high - block[0] - 1:
            streets.append(position)
            position += rng.integer(block[0], block[1] + 1) + 1
    return streets


def _blocks(
    row_lines: list[int], col_lines: list[int], rows: int, cols: int
) -> list[tuple[int, int, int, int]]:
    """Rectangles (r0, r1, c0, c1), inclusive, between consecutive lines of either axis."""
    row_gaps = [(low + 1, high - 1) for low, high in pairwise([-1, *row_lines, rows]) if high - low > 1]
    col_gaps = [(low + 1, high - 1) for low, high in pairwise([-1, *col_lines, cols]) if high - low > 1]
    return [(r0, r1, c0, c1) for r0, r1 in row_gaps for c0, c1 in col_gaps]


def _layout(rng: StableRng, rows: int, cols: int, params: CityParams) -> tuple[np.ndarray, np.ndarray]:
    """Road classes and terrain (building/park/water) of a new map."""
    road = np.full((rows, cols), NO_ROAD, dtype=np.int64)
    terrain = np.full((rows, cols), spec.BUILDING, dtype=np.int64)

    avenue_rows = _line_positions(rng, rows, params.avenue_spacing)
    avenue_cols = _line_positions(rng, cols, params.avenue_spacing)
    street_rows = _street_positions(rng, avenue_rows, rows, params.block_size)
    street_cols = _street_positions(rng, avenue_cols, cols, params.block_size)
    road[street_rows, :] = STREET
    road[:, street_cols] = STREET

    # Built-over street segments (between two crossings) make blocks irregular; road.T: the columns as rows.
    all_rows, all_cols = sorted(avenue_rows + street_rows), sorted(avenue_cols + street_cols)
    for lines, crossings, view in ((street_rows, all_cols, road), (street_cols, all_rows, road.T)):
        for line in lines:
            for low, high in pairwise([-1, *crossings, view.shape[1]]):
                if high - low > 1 and rng.bernoulli(params.street_gap_probability):
                    view[line, low + 1 : high] = NO_ROAD

    # Alleys through blocks, parks.
    for r0, r1, c0, c1 in _blocks(all_rows, all_cols, rows, cols):
        if rng.bernoulli(params.park_probability):
            terrain[r0 : r1 + 1, c0 : c1 + 1] = spec.PARK
        if rng.bernoulli(params.alley_probability):
            height, width = r1 - r0 + 1, c1 - c0 + 1
            if width >= 3 and (height < 3 or rng.bernoulli(0.5)):
                c = c0 + rng.integer(1, width - 1)
                r_from, r_to = (r0, r1) if rng.bernoulli(0.7) else (r0, r0 + height // 2)
                road[r_from : r_to + 1, c] = ALLEY
            elif height >= 3:
                r = r0 + rng.integer(1, height - 1)
                c_from, c_to = (c0, c1) if rng.bernoulli(0.7) else (c0 + width // 2, c1)
                road[r, c_from : c_to + 1] = ALLEY

    road[avenue_rows, :] = AVENUE
    road[:, avenue_cols] = AVENUE
    highway_rows, highway_cols = (
        [rng.choice(avenues)] if avenues and rng.bernoulli(params.highway_probability) else []
        for avenues in (avenue_rows, avenue_cols)
    )
    # A highway keeps its cells except where an avenue crosses it: the avenue bridges over it, a junction.
    for lines, view in ((highway_rows, road), (highway_cols, road.T)):
        for line in lines:
            view[line, view[line, :] != AVENUE] = HIGHWAY
    road[np.ix_(highway_rows, highway_cols)] = HIGHWAY  # two highways meet at an interchange
    # Limited access: streets and alleys stop one cell short of a highway; only avenues join it.
    padded = np.pad(road == HIGHWAY, 1)  # padded[r + 1, c + 1] is cell (r, c)
    touches = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    road[touches & ((road == STREET) | (road == ALLEY))] = NO_ROAD

    if rng.bernoulli(params.river_probability):
        _river(rng, road, terrain, (street_rows, street_cols), params)
    return road, terrain


def _river(
    rng: StableRng,
    road: np.ndarray,
    terrain: np.ndarray,
    streets: tuple[list[int], list[int]],
    params: CityParams,
) -> None:
    """A meandering river across the map; highways bridge it, some avenues and streets do."""
    rows, cols = road.shape
    across_rows = rng.bernoulli(0.5)  # True: the river runs from left to right
    length, span = (cols, rows) if across_rows else (rows, cols)
    width = rng.integer(1, 3)
    centre = rng.integer(span // 4, span - span // 4)
    water = np.zeros_like(road, dtype=bool)
    across = water.T if across_rows else water  # across[along] is one cross-section of the river
    for along in range(length):
        centre = min(max(centre + rng.integer(-1, 2), 2), span - 2 - width)
        across[along, centre : centre + width] = True
    bridged_rows, bridged_cols = (
        {line for line in lines if rng.bernoulli(params.street_bridge_probability)} for lines in streets
    )
    # an avenue line is bridged whole or not at all: one draw per avenue row/column the river crosses
    avenue_lines = sorted(
        {("row", r) for r in range(rows) if (road[r, :] == AVENUE).all()}
        | {("col", c) for c in range(cols) if (road[:, c] == AVENUE).all()}
    )
    unbridged = {line for line in avenue_lines if not rng.bernoulli(params.avenue_bridge_probability)}
    rr, cc = np.nonzero(water)
    for r, c in zip(rr.tolist(), cc.tolist(), strict=True):
        klass = road[r, c]
        if (
            klass == HIGHWAY
            or (klass == AVENUE and ("row", r) not in unbridged and ("col", c) not in unbridged)
            or (klass == STREET and (r in bridged_rows or c in bridged_cols))
        ):
            continue  # a bridge
        road[r, c] = NO_ROAD
        terrain[r, c] = spec.WATER


def _congestion(
    rng: StableRng, road: np.ndarray, hour: int, params: CityParams, corridor: tuple[int, int] | None
) -> np.ndarray:
    """Congestion level per cell from integer loads: hour x class busyness x (1 + hotspots) + noise.
    corridor: (row, col) of an extra hotspot (the middle of the start-goal corridor), or None."""
    rows, cols = road.shape
    hotspot = np.zeros((rows, cols), dtype=np.int64)
    r_idx, c_idx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = [
        (rng.integer(0, rows), rng.integer(0, cols))
        for _ in range(rng.integer(params.hotspots[0], params.hotspots[1] + 1))
    ]
    if corridor is not None:
        centres.append(corridor)
    for r0, c0 in centres:
        radius = rng.integer(params.hotspot_radius[0], params.hotspot_radius[1] + 1)
        strength = rng.integer(40, 101)  # percent extra traffic at the centre
        distance2 = (r_idx - r0) ** 2 + (c_idx - c0) ** 2
        hotspot += strength * np.maximum(radius * radius - distance2, 0) // (radius * radius)
    class_traffic = np.array(params.class_traffic, dtype=np.int64)
    load = params.traffic_by_hour[hour] * class_traffic[np.maximum(road, 0)] * (100 + hotspot) // 10000
    load += rng.integer_array(-params.congestion_jitter, params.congestion_jitter + 1, (rows, cols))
    level = np.searchsorted(np.array(params.congestion_thresholds), load, side="right")
    return np.where(road >= 0, level, 0).astype(np.int64)


def _barrier(rng: StableRng, road: np.ndarray, start: int, goal: int, margin: tuple[int, int]) -> np.ndarray:
    """Bool mask of closures cutting the direct corridor: the road cells of one line strictly between start
    and goal, across the corridor plus a random margin each side. No monotone route survives it."""
    rows, cols = road.shape
    (s_row, s_col), (g_row, g_col) = divmod(start, cols), divmod(goal, cols)
    axes = [axis for axis, gap in (("row", abs(s_row - g_row)), ("col", abs(s_col - g_col))) if gap >= 2]
    closed = np.zeros_like(road, dtype=bool)
    if not axes:
        return closed
    axis = rng.choice(axes)
    low_margin = rng.integer(margin[0], margin[1] + 1)
    high_margin = rng.integer(margin[0], margin[1] + 1)
    s_line, g_line, s_across, g_across, size = (
        (s_row, g_row, s_col, g_col, cols) if axis == "row" else (s_col, g_col, s_row, g_row, rows)
    )
    line = rng.integer(min(s_line, g_line) + 1, max(s_line, g_line))
    first, last = min(s_across, g_across), max(s_across, g_across)
    low, high = max(first - low_margin, 0), min(last + high_margin, size - 1)
    # Trucks keep to avenues and highways: leave one of those lines that cross the barrier's line open
    # beyond one end, the nearest to the corridor, so that going round stays possible for every vehicle.
    oriented = road if axis == "row" else road.T
    major = (oriented == AVENUE) | (oriented == HIGHWAY)
    crossings = np.flatnonzero(major[line - 1] & major[line + 1]).tolist()
    if not any(c < low or c > high for c in crossings):
        if not crossings:
            return closed
        # the crossing nearest to either end of the corridor; on a small map it may lie inside the corridor,
        # then the barrier only narrows the corridor to that avenue
        nearest = min(crossings, key=lambda c: (min(abs(c - first), abs(c - last)), c))
        low, high = (nearest + 1, high) if 2 * nearest < first + last else (low, nearest - 1)
    (closed if axis == "row" else closed.T)[line, low : high + 1] = oriented[line, low : high + 1] >= 0
    return closed


def _tokens(road: np.ndarray, terrain: np.ndarray, congestion: np.ndarray | int) -> np.ndarray:
    """Flat tokens: `spec.road_token` of each road cell's class and congestion, the terrain elsewhere."""
    return np.where(
        road >= 0, spec.ROAD_BASE + np.maximum(road, 0) * len(spec.CONGESTION_LEVELS) + congestion, terrain
    ).reshape(-1)


def build_city(
    rng: StableRng, rows: int, cols: int, params: CityParams, shared_tokens: np.ndarray, min_manhattan: int
) -> City:
    """A new base scenario from `rng`. Start and goal sit on cells whose token is in `shared_tokens` (bool
    [VOCAB_SIZE]: every vehicle may enter), >= `min_manhattan` apart; NoEndpoints when no such pair exists."""
    road, terrain = _layout(rng, rows, cols, params)
    hour = rng.integer(0, 24)
    # Endpoints are chosen on road classes alone (congestion never bars a vehicle), so that the corridor
    # between them can get a barrier and a hotspot before traffic is computed.
    free_tokens = _tokens(road, terrain, 0)
    road_cells = np.flatnonzero(road.reshape(-1) >= 0).tolist()
    closed = np.zeros(rows * cols, dtype=bool)
    closures = rng.integer(params.closures[0], params.closures[1] + 1)
    if closures:
        closed[rng.sample(road_cells, min(closures, len(road_cells)))] = True

    candidates = np.flatnonzero(shared_tokens[free_tokens] & ~closed)
    if candidates.size < 2:
        raise NoEndpoints("fewer than 2 road cells every vehicle may use")
    # Farthest Manhattan distance from each candidate to any other, in O(n) via the rotated axes r+c, r-c.
    diagonal = candidates // cols + candidates % cols
    anti = candidates // cols - candidates % cols
    farthest = np.maximum.reduce(
        [diagonal.max() - diagonal, diagonal - diagonal.min(), anti.max() - anti, anti - anti.min()]
    )
    viable = candidates[farthest >= min_manhattan]
    if viable.size == 0:
        raise NoEndpoints(f"no two shared road cells at Manhattan distance >= {min_manhattan}")
    start = rng.choice(viable.tolist())
    s_row, s_col = divmod(start, cols)
    distance = np.abs(candidates // cols - s_row) + np.abs(candidates % cols - s_col)
    goal = rng.choice(candidates[distance >= min_manhattan].tolist())

    if rng.bernoulli(params.barrier_probability):
        closed |= _barrier(rng, road, start, goal, params.barrier_margin).reshape(-1)
    corridor = None
    if rng.bernoulli(params.corridor_hotspot_probability):
        g_row, g_col = divmod(goal, cols)
        corridor = ((s_row + g_row) // 2, (s_col + g_col) // 2)
    congestion = _congestion(rng, road, hour, params, corridor)
    tokens = _tokens(road, terrain, congestion)
    tokens[closed] = spec.CLOSED
    tokens[start], tokens[goal] = spec.START, spec.GOAL
    return City(tokens, road, congestion, hour, start, goal)
