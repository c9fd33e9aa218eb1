"""One token colour map for every figure: validate's scenarios.png and evaluate's route maps draw a token
in the same colour (the goal was blue in one and red in the other)."""

from __future__ import annotations

import ast

import numpy as np

from hrm.data import colours, spec
from tests.conftest import REPO


def test_every_token_has_one_colour_and_the_markers_stand_out():
    palette = colours.token_colours()
    assert palette.shape == (spec.VOCAB_SIZE, 3) and ((palette >= 0) & (palette <= 1)).all()
    for token, hex_colour in (
        (spec.START, colours.START),
        (spec.GOAL, colours.GOAL),
        (spec.ROUTE, colours.ROUTE),
    ):
        np.testing.assert_allclose(palette[token], colours.rgb(hex_colour))
        others = np.delete(palette, token, axis=0)
        assert np.abs(others - palette[token]).sum(axis=1).min() > 0.2  # no other token looks like it
    legend = dict(colours.TOKEN_LEGEND)
    np.testing.assert_allclose(palette[spec.GOAL], colours.rgb(legend["goal"]))
    np.testing.assert_allclose(palette[spec.BUILDING], colours.rgb(legend["building"]))
    # congestion reddens a road: jam is redder than free for every class
    for road_class in spec.ROAD_CLASSES:
        free, jam = palette[spec.road_token(road_class, 0)], palette[spec.road_token(road_class, 3)]
        assert jam[0] - jam[2] > free[0] - free[2]


def test_no_figure_keeps_its_own_token_colours():
    """Every module that draws tokens takes them from hrm.data.colours; none defines its own map."""
    users = []
    for path in sorted((REPO / "hrm").rglob("*.py")):
        if path.name == "colours.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert not {n for n in names if "token_colour" in n}, f"{path} defines its own token colours"
        if any(
            isinstance(node, ast.ImportFrom) and any(a.name == "colours" for a in node.names)
            for node in ast.walk(tree)
        ):
            users.append(path.relative_to(REPO).as_posix())
    assert {"hrm/data/validation/validate.py", "hrm/evaluation/plots.py"} <= set(users)
