"""One colour per token, for every figure that draws a city (validate's scenarios.png, evaluate's route
maps): the same goal is the same blue everywhere. Plain hex and numpy; no matplotlib import needed."""

from __future__ import annotations

import numpy as np

from hrm.data import spec

ROAD_CLASS_COLOURS = ("#f4efe1", "#e2e2e2", "#fbe7a1", "#f5b971")  # alley, street, avenue, highway
JAM_RED = "#d9261a"
CONGESTION_SHARE = (0.0, 0.3, 0.55, 0.8)  # how far each congestion level blends the road towards JAM_RED
BUILDING, PARK, WATER = "#7d7d7d", "#9fd49a", "#7bb2e3"
CLOSED, START, GOAL, ROUTE = "#111111", "#1f9e3a", "#1f4fd6", "#b000b0"
# The legend every figure and the HTML report show, in this order.
TOKEN_LEGEND = (
    ("building", BUILDING),
    ("park", PARK),
    ("water", WATER),
    ("alley / street / avenue / highway", ROAD_CLASS_COLOURS[0]),
    ("congestion (redder = heavier)", JAM_RED),
    ("closed road", CLOSED),
    ("start", START),
    ("goal", GOAL),
    ("route", ROUTE),
)


def rgb(hex_colour: str) -> np.ndarray:
    """'#rrggbb' -> [r, g, b] in [0, 1]."""
    value = hex_colour.lstrip("#")
    return np.array([int(value[k : k + 2], 16) / 255 for k in (0, 2, 4)])


def token_colours() -> np.ndarray:
    """[VOCAB_SIZE, 3] RGB in [0, 1] per token id (PAD white); congestion blends a road's class colour
    towards red."""
    colours = np.ones((spec.VOCAB_SIZE, 3))
    tokens = (spec.BUILDING, spec.PARK, spec.WATER, spec.CLOSED, spec.START, spec.GOAL, spec.ROUTE)
    for token, colour in zip(tokens, (BUILDING, PARK, WATER, CLOSED, START, GOAL, ROUTE), strict=True):
        colours[token] = rgb(colour)
    for road_class, base in zip(spec.ROAD_CLASSES, ROAD_CLASS_COLOURS, strict=True):
        for level, share in enumerate(CONGESTION_SHARE):
            colours[spec.road_token(road_class, level)] = (1 - share) * rgb(base) + share * rgb(JAM_RED)
    return colours
