"""The token and cost contract that generate, validate and evaluate share."""

import numpy as np
import pytest
import yaml

from hrm.data import spec


def test_road_tokens_encode_class_and_congestion_distinctly():
    tokens = {spec.road_token(c, g) for c in spec.ROAD_CLASSES for g in range(len(spec.CONGESTION_LEVELS))}
    assert len(tokens) == len(spec.ROAD_CLASSES) * len(spec.CONGESTION_LEVELS)
    assert min(tokens) == spec.ROAD_BASE and max(tokens) == spec.CLOSED - 1
    assert spec.PAD not in tokens and spec.ROUTE == spec.VOCAB_SIZE - 1
    assert len(spec.token_names()) == spec.VOCAB_SIZE


def test_paper_vehicles_have_different_access_and_costs():
    params = yaml.safe_load(open("params.yaml", encoding="utf-8"))
    model = spec.CostModel(tuple(spec.parse_vehicles(params["generate"]["vehicles"])))
    table = model.cost_table()
    assert model.identifiers() == ["<blank>", "bike", "car", "van", "truck"]
    assert (table[0] == spec.BLOCKED).all()
    # every pair of vehicles differs somewhere: same input, different label is possible
    for a in range(1, table.shape[0]):
        for b in range(a + 1, table.shape[0]):
            assert not np.array_equal(table[a], table[b])
    # bikes are barred from highways, trucks from alleys and streets
    assert table[1, spec.road_token("highway", 0)] == spec.BLOCKED
    assert table[4, spec.road_token("alley", 0)] == spec.BLOCKED
    assert table[4, spec.road_token("street", 0)] == spec.BLOCKED
    assert (table[1:, spec.CLOSED] == spec.BLOCKED).all()
    assert (table[1:, [spec.START, spec.GOAL]] == spec.ENDPOINT_COST).all()


def test_bad_vehicle_profile_names_the_index_and_field():
    with pytest.raises(ValueError, match=r"\[1\]\.class_cost\.street"):
        spec.parse_vehicles(
            [
                {
                    "name": "a",
                    "original_id": "x",
                    "class_cost": {"street": 1},
                    "congestion_cost": [0, 0, 0, 0],
                },
                {
                    "name": "b",
                    "original_id": "y",
                    "class_cost": {"street": 0},
                    "congestion_cost": [0, 0, 0, 0],
                },
            ]
        )


def test_eighteen_raw_files():
    names = spec.raw_file_names()
    assert len(names) == len(set(names)) == 18
    assert "city_routing_paper_train_all__vehicle_types.json" in names
