"""Wire format of POST /v1/classify: validated here, so a bad body is a 422 and never reaches a batch."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

# strict: a string "0.5" or a boolean is a client bug, not a pixel; allow_inf_nan: Python's JSON parser
# accepts NaN and Infinity, which would otherwise slip past the range check into the model.
Pixel = Annotated[float, Field(strict=True, ge=-1.0, le=1.0, allow_inf_nan=False)]
Row = Annotated[list[Pixel], Field(min_length=3, max_length=3)]
Grid = Annotated[list[Row], Field(min_length=3, max_length=3)]
Flat = Annotated[list[Pixel], Field(min_length=9, max_length=9)]


def _layout(value: Any) -> str:
    """Tell the two accepted layouts apart up front, so an error names one layout instead of both."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "grid"
    return "flat"


Pixels = Annotated[Annotated[Grid, Tag("grid")] | Annotated[Flat, Tag("flat")], Discriminator(_layout)]


class ClassifyRequest(BaseModel):
    """A 3x3 display: three rows of three pixels, or the nine pixels row by row; -1 black .. 1 white."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"pixels": [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]}]},
    )

    pixels: Pixels = Field(description="3 rows of 3 pixels, or a flat list of 9, each in [-1, 1]")
    explain: bool = Field(
        default=False, strict=True, description="Also return every layer's activations (GET /v1/classify/network)."
    )

    def flat(self) -> list[float]:
        """The nine pixel values, row by row."""
        values: list[float] = []
        for item in self.pixels:
            if isinstance(item, list):
                values.extend(item)
            else:
                values.append(item)
        return values


class Activations(BaseModel):
    """Every layer of the network for one input, in the order of GET /v1/classify/network's layers."""

    input: list[float] = Field(description="the 9 pixels")
    hidden1: list[float] = Field(description="the first hidden layer after tanh, in (-1, 1)")
    hidden2: list[float] = Field(description="the second hidden layer after the sigmoid, in (0, 1)")
    output: list[float] = Field(description="the output sums (logits); `probabilities` is their softmax")


class ClassifyResponse(BaseModel):
    """The most probable symbol and the probability of each symbol (they sum to 1)."""

    symbol: str = Field(description="name of the most probable symbol")
    probabilities: dict[str, float] = Field(description="probability of each symbol, by name")
    # Left out of the answer unless asked for, so that a plain request's body stays as it was.
    activations: Activations | None = Field(
        default=None, exclude_if=lambda v: v is None, description="every layer's values, with `explain: true`"
    )
