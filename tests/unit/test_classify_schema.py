"""The classify request and response models, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from service.schemas import ClassifyRequest, ClassifyResponse

PLUS_GRID = [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]


@pytest.mark.parametrize(
    "pixels",
    [
        PLUS_GRID,
        [v for row in PLUS_GRID for v in row],
        [[-1.0, 1.0, -0.25], [0, 0.5, 1], [1, 1, -1]],
        [-1] * 9,
        [1.0] * 9,
    ],
)
def test_good_bodies(pixels: Any) -> None:
    request = ClassifyRequest.model_validate({"pixels": pixels})
    flat = request.flat()
    assert len(flat) == 9 and all(isinstance(v, float) for v in flat)


def test_grid_and_flat_read_row_by_row() -> None:
    grid = ClassifyRequest.model_validate({"pixels": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]})
    flat = ClassifyRequest.model_validate({"pixels": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]})
    assert grid.flat() == flat.flat() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


BAD_BODIES = {
    "nan": '{"pixels": [NaN, 0, 0, 0, 0, 0, 0, 0, 0]}',
    "inf": '{"pixels": [[0, 0, 0], [0, Infinity, 0], [0, 0, 0]]}',
    "minus inf": '{"pixels": [0, 0, 0, 0, 0, 0, 0, 0, -Infinity]}',
    "above 1": '{"pixels": [0, 0, 0, 0, 1.0001, 0, 0, 0, 0]}',
    "below -1": '{"pixels": [[0, 0, 0], [0, 0, 0], [0, 0, -1.5]]}',
    "string": '{"pixels": ["0.5", 0, 0, 0, 0, 0, 0, 0, 0]}',
    "boolean": '{"pixels": [true, 0, 0, 0, 0, 0, 0, 0, 0]}',
    "null pixel": '{"pixels": [null, 0, 0, 0, 0, 0, 0, 0, 0]}',
    "8 flat": '{"pixels": [0, 0, 0, 0, 0, 0, 0, 0]}',
    "10 flat": '{"pixels": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}',
    "2 rows": '{"pixels": [[0, 0, 0], [0, 0, 0]]}',
    "4 rows": '{"pixels": [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]}',
    "short row": '{"pixels": [[0, 0, 0], [0, 0], [0, 0, 0]]}',
    "mixed": '{"pixels": [[0, 0, 0], 0, [0, 0, 0]]}',
    "too deep": '{"pixels": [[[0], [0], [0]], [0, 0, 0], [0, 0, 0]]}',
    "empty": '{"pixels": []}',
    "not a list": '{"pixels": 0.5}',
    "null": '{"pixels": null}',
    "missing": "{}",
    "extra field": '{"pixels": [0, 0, 0, 0, 0, 0, 0, 0, 0], "colour": "red"}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_name_the_field(body: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ClassifyRequest.model_validate(json.loads(body))  # Python's parser, like FastAPI's, reads NaN
    locations = [error["loc"] for error in caught.value.errors()]
    expected = "colour" if "colour" in body else "pixels"
    assert all(loc[0] == expected for loc in locations), locations


def test_response_model() -> None:
    response = ClassifyResponse(symbol="plus", probabilities={"plus": 0.9, "cross": 0.1})
    assert json.loads(response.model_dump_json()) == {
        "symbol": "plus",
        "probabilities": {"plus": 0.9, "cross": 0.1},
    }
