"""Atomic writes keep what was there when a write fails."""

import pytest

from hrm.io import atomic_write_json, dumps_json, staged_directory


def test_dumps_json_is_canonical():
    assert dumps_json({"b": 1, "a": [1, 2]}) == dumps_json({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}\n'


def test_failed_directory_build_leaves_old_contents(tmp_path):
    target = tmp_path / "out"
    with staged_directory(target) as staging:
        atomic_write_json(staging / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            atomic_write_json(staging / "a.json", {"v": 2})
            raise RuntimeError("boom")
    assert (target / "a.json").read_text() == '{"v":1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
