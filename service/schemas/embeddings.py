"""Wire schemas of OpenAI's `/v1/embeddings`: texts or token ids in, float lists or base64 out."""

from __future__ import annotations

import base64
import struct
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from service.schemas.inputs import TextOrIds, check_inputs, split_inputs
from service.schemas.sampling import Lenient

MAX_INPUTS = 64
MAX_INPUT_CHARS = 32_768
MAX_INPUT_TOKENS = 65_536  # an id list longer than the context keeps its first `context` tokens, as a text does


class EmbeddingRequest(Lenient):
    model: str | None = None
    input: TextOrIds = Field(
        description=f"A text, a list of texts, a list of token ids, or a list of such lists (at most {MAX_INPUTS})."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: the little-endian float32 bytes of each vector, as OpenAI sends them."
    )
    dimensions: int | None = Field(default=None, ge=1, description="Accepted only when it equals the model's width.")
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, v: TextOrIds) -> TextOrIds:
        # OpenAI's spec: the input "cannot be an empty string" (nor an empty list): nothing to embed.
        check_inputs(v, "input", MAX_INPUTS, MAX_INPUT_CHARS, MAX_INPUT_TOKENS, empty_text=False)
        return v

    @property
    def inputs(self) -> list[str | list[int]]:
        return split_inputs(self.input)


def encode_vector(vector: list[float], encoding_format: Literal["float", "base64"]) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
