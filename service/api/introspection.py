"""The routes that show the models' insides: POST /v1/attention and POST /v1/embeddings/map are tokenized and checked
here (the 128-token limit, layer and head indices: a 400 naming the field), then run as jobs by the embeddings worker
(workers/introspection.py), batched with its other requests; GET /v1/classify/network is the pixel net, read once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.responses import Response

from model.gpt import encode
from model.pixels import load_pixels
from service.api.errors import bad_request, failure_exception
from service.api.gpt.served import ServedGPT
from service.schemas.introspection import (
    MAX_INSIDE_TOKENS,
    AttentionRequest,
    AttentionResponse,
    EmbeddingMapRequest,
    EmbeddingMapResponse,
    Layer,
    PixelNetwork,
)
from service.settings import Settings
from service.transport.client import RequestFailed
from service.transport.messages import AttentionJob, IntrospectionJob, MapJob


def pixel_network(pixels_dir: Path, model_id: str) -> PixelNetwork:
    model = load_pixels(pixels_dir)
    linears = (model.hidden1, model.hidden2, model.out)
    return PixelNetwork(
        model=model_id,
        symbols=list(model.config.symbols),
        layers=[
            Layer(name=info.name, size=info.size, activation=info.activation, range=list(info.bounds or []) or None)
            for info in model.layers()
        ],
        weights=[linear.weight.detach().tolist() for linear in linears],
        biases=[linear.bias.detach().tolist() for linear in linears],
    )


class Submitter(Protocol):
    """What sends a job to the worker and awaits its answer, the response body as JSON: the embeddings'
    BatchClient (a fake in tests); raises `RequestFailed`."""

    async def call(self, payload: Any) -> Any: ...


class IntrospectionRoutes:
    """Checks requests against the GPT's shape, then sends them to the embeddings worker as jobs."""

    def __init__(self, gpt: ServedGPT, handler: Submitter) -> None:
        self.gpt = gpt
        self.handler = handler
        self.tok = gpt.tok
        self.n_layer, self.n_head = int(gpt.config.n_layer), int(gpt.config.n_head)

    def tokens(self, text: str, param: str) -> list[int]:
        ids = encode(self.tok, text)
        if len(ids) > MAX_INSIDE_TOKENS:
            raise bad_request(
                f"{param} is {len(ids)} tokens; at most {MAX_INSIDE_TOKENS} are shown", param, "context_length_exceeded"
            )
        return ids

    def word(self, word: str) -> list[int]:
        # Words run inside text, where they carry their leading space: " bank", not "bank" (another token).
        return encode(self.tok, " " + word.strip())

    @staticmethod
    def indices(chosen: list[int] | None, count: int, param: str, what: str) -> list[int]:
        if chosen is None:
            return list(range(count))
        bad = next((i for i in chosen if i >= count), None)
        if bad is not None:
            raise bad_request(f"{what} {bad} does not exist: this model has {count} {what}s (0..{count - 1})", param)
        return chosen

    async def submit(self, job: IntrospectionJob) -> Response:
        # The worker sends the response body already encoded (an AttentionResponse or EmbeddingMapResponse).
        try:
            body: bytes = await self.handler.call(job)
        except RequestFailed as exc:
            raise failure_exception(exc.failure) from exc
        return Response(body, media_type="application/json")

    async def attention(self, body: AttentionRequest) -> Response:
        self.gpt.check_model(body.model)
        job = AttentionJob(
            ids=self.tokens(body.prompt, "prompt"),
            layers=self.indices(body.layers, self.n_layer, "layers", "layer"),
            heads=self.indices(body.heads, self.n_head, "heads", "head"),
        )
        return await self.submit(job)

    async def embedding_map(self, body: EmbeddingMapRequest) -> Response:
        self.gpt.check_model(body.model)
        job = MapJob(
            request=body,
            word_ids=[self.word(w) for w in body.words],
            context_ids=self.tokens(body.context, "context") if body.context is not None else None,
            analogy_ids=[self.word(w) for w in body.analogy] if body.analogy is not None else None,
        )
        return await self.submit(job)


def register_introspection_routes(app: FastAPI, routes: IntrospectionRoutes, network: PixelNetwork) -> None:
    async def classify_network() -> PixelNetwork:
        return network

    app.add_api_route("/v1/attention", routes.attention, methods=["POST"], response_model=AttentionResponse)
    app.add_api_route("/v1/embeddings/map", routes.embedding_map, methods=["POST"], response_model=EmbeddingMapResponse)
    app.add_api_route("/v1/classify/network", classify_network, methods=["GET"])


def add_introspection_routes(app: FastAPI, settings: Settings, gpt: ServedGPT, embeddings: Submitter) -> None:
    """The three routes on the server's app; the API key and in-flight limits come from the Guard, as for the rest."""
    routes = IntrospectionRoutes(gpt, embeddings)
    register_introspection_routes(app, routes, pixel_network(settings.pixels_dir, settings.pixels_model_id))
