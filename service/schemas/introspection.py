"""Wire schemas of the endpoints that show the models' insides: attention, the embedding plane, the pixel network.

Limits live here (`Field` bounds); the ones that depend on the model (tokens against the 128-token limit, layer and
head indices) are checked by api/introspection.py against the loaded model, as a 400 naming the field. Unknown fields
are refused by name (422), so a misspelt option is never silently ignored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Prompts shown in the attention view: 128 tokens keep a [layer][head][query][key] answer near 1 MB at 4 heads and
# 4 layers, and a 128x128 map is about as much as a page can draw legibly.
MAX_INSIDE_TOKENS = 128
MAX_INSIDE_CHARS = 4096  # a bound before tokenizing; the token count is the real limit
MAX_WORDS = 32
MAX_NEIGHBOURS = 32

Index = Annotated[int, Field(ge=0, le=1023)]
Word = Annotated[str, Field(min_length=1, max_length=40, pattern=r"\S")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttentionRequest(_Strict):
    model: str | None = Field(default=None, description="The GPT's id from /v1/models; the GPT when omitted.")
    prompt: str = Field(min_length=1, max_length=MAX_INSIDE_CHARS, description="At most 128 tokens.")
    layers: list[Index] | None = Field(
        default=None, min_length=1, max_length=64, description="Layers to return (0 is the first); all when omitted."
    )
    heads: list[Index] | None = Field(
        default=None, min_length=1, max_length=64, description="Heads to return in each layer; all when omitted."
    )


class AttentionResponse(BaseModel):
    object: str = "attention"
    model: str
    token_ids: list[int]
    tokens: list[str] = Field(description="Each token's text, leading spaces included.")
    layers: list[int] = Field(description="The layers in `attentions`, in this order.")
    heads: list[int] = Field(description="The heads in each layer of `attentions`, in this order.")
    attentions: list[list[list[list[float]]]] = Field(
        description="[layer][head][query][key], causal: row q holds keys 0..q (q + 1 numbers summing to 1),"
        " rounded to 4 decimals."
    )


class EmbeddingMapRequest(_Strict):
    model: str | None = Field(default=None, description="The GPT's id from /v1/models; the GPT when omitted.")
    words: list[Word] = Field(min_length=1, max_length=MAX_WORDS, description="Words to place on the plane.")
    context: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_INSIDE_CHARS,
        description="A sentence (at most 128 tokens): each occurrence of the words in it, through the layers.",
    )
    analogy: list[Word] | None = Field(
        default=None, min_length=3, max_length=3, description="[a, b, c]: the words nearest to a - b + c."
    )
    neighbours: int = Field(default=8, ge=0, le=MAX_NEIGHBOURS, description="Nearest words given for each word.")


class Near(BaseModel):
    word: str
    cosine: float
    point: list[float] = Field(description="Its place on the plane, [x, y].")


class WordPoint(BaseModel):
    word: str
    tokens: list[str] = Field(description="The word's tokens (a leading space is added: words run inside text).")
    point: list[float]
    neighbours: list[Near]


class LayerPoint(BaseModel):
    layer: int = Field(description="0: the input embedding; n: the output of layer n (of n_layer).")
    point: list[float]
    nearest: list[Near] = Field(description="The vocabulary words nearest to this state (cosine).")


class Occurrence(BaseModel):
    word: str
    position: int = Field(description="Index in `context.tokens` of the word's last token.")
    path: list[LayerPoint]


class ContextPaths(BaseModel):
    tokens: list[str]
    occurrences: list[Occurrence]


class Analogy(BaseModel):
    expression: str
    point: list[float]
    nearest: list[Near]


class EmbeddingMapResponse(BaseModel):
    object: str = "embedding_map"
    model: str
    explained_variance: list[float] = Field(description="Share of the embeddings' variance along each axis.")
    words: list[WordPoint]
    context: ContextPaths | None = None
    analogy: Analogy | None = None


class Layer(BaseModel):
    name: str
    size: int
    activation: str = Field(description="What squashes this layer's sums: identity, tanh, sigmoid or softmax.")
    range: list[float] | None = Field(description="The range of its activations, [low, high], if bounded.")


class PixelNetwork(BaseModel):
    """The pixel classifier's layers, weights and biases: enough to draw it and to recompute it."""

    model: str
    symbols: list[str]
    layers: list[Layer]
    weights: list[list[list[float]]] = Field(description="weights[i][j][k]: from neuron k of layer i to j of i + 1.")
    biases: list[list[float]] = Field(description="biases[i][j]: of neuron j of layer i + 1.")
