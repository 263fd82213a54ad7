from __future__ import annotations

import json

import pytest

from rfest import ReceptiveField


def field() -> ReceptiveField:
    # Unit i sees i*4 - 3 ... i*4 + 3 along axis 0, i*2 ... i*2 + 4 along axis 1.
    return ReceptiveField((7, 5), (4, 2), (3, 0), (0.0, 2.0), (32, 20), (8, 8))


def test_box_and_center_follow_the_definition() -> None:
    rf = field()
    assert rf.box((0, 0)) == ((-3, 4), (0, 5))
    assert rf.box((2, 3)) == ((5, 12), (6, 11))
    assert rf.center((2, 3)) == (8.0, 8.0)


def test_index_of_the_wrong_rank() -> None:
    with pytest.raises(ValueError, match="2 spatial axes"):
        field().box(1)


def test_plain_dict_is_json_ready() -> None:
    data = json.loads(json.dumps(field().to_dict()))
    assert data["size"] == [7, 5]
    assert data["grown"] is False


def test_global_field_has_no_box() -> None:
    rf = ReceptiveField(None, None, None, None, (8,), (), is_global=True)
    with pytest.raises(ValueError, match="global"):
        rf.box(0)
    assert "global" in str(rf)


def test_immutable() -> None:
    with pytest.raises(AttributeError):
        field().size = (1, 1)  # type: ignore[misc]
