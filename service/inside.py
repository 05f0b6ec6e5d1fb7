"""The API-server side of the endpoints that show the models' insides.

POST /v1/attention and POST /v1/embeddings/map are tokenized and checked here against the loaded model (the
128-token limit, layer and head indices: a 400 naming the field), then sent as jobs to the embeddings worker, the
GPT copy that is not the decoding engine (service/inside_worker.py). They go over the embeddings' channel
(service/batch_client.py), so they are batched with that worker's other requests and answered as they are. GET
/v1/classify/network is the pixel classifier's layers, weights and biases, read once at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.responses import Response
from transformers import GPT2Config

from model.gpt import encode, load_tokenizer
from model.pixels import load_pixels
from service.errors import bad_request, model_not_found
from service.inside_worker import AttentionJob, InsideJob, MapJob
from service.schemas.inside import (
    MAX_INSIDE_TOKENS,
    AttentionRequest,
    AttentionResponse,
    EmbeddingMapRequest,
    EmbeddingMapResponse,
    Layer,
    PixelNetwork,
)
from service.settings import Settings


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
    BatchClient (a fake in tests)."""

    async def call(self, payload: Any) -> Any: ...


class InsideRoutes:
    """Checks requests against the GPT's shape, then sends them to the embeddings worker as jobs."""

    def __init__(self, settings: Settings, handler: Submitter) -> None:
        self.settings = settings
        self.handler = handler
        self.tok = load_tokenizer(settings.gpt_dir)
        config = GPT2Config.from_pretrained(settings.gpt_dir, local_files_only=True)
        self.n_layer, self.n_head = int(config.n_layer), int(config.n_head)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.gpt_model_id:
            raise model_not_found(model)

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

    async def submit(self, job: InsideJob) -> Response:
        # The worker sends the response body already encoded (an AttentionResponse or EmbeddingMapResponse).
        body: bytes = await self.handler.call(job)
        return Response(body, media_type="application/json")

    async def attention(self, body: AttentionRequest) -> Response:
        self.check_model(body.model)
        job = AttentionJob(
            ids=self.tokens(body.prompt, "prompt"),
            layers=self.indices(body.layers, self.n_layer, "layers", "layer"),
            heads=self.indices(body.heads, self.n_head, "heads", "head"),
        )
        return await self.submit(job)

    async def embedding_map(self, body: EmbeddingMapRequest) -> Response:
        self.check_model(body.model)
        job = MapJob(
            request=body,
            word_ids=[self.word(w) for w in body.words],
            context_ids=self.tokens(body.context, "context") if body.context is not None else None,
            analogy_ids=[self.word(w) for w in body.analogy] if body.analogy is not None else None,
        )
        return await self.submit(job)


def register_inside_routes(app: FastAPI, routes: InsideRoutes, network: PixelNetwork) -> None:
    async def classify_network() -> PixelNetwork:
        return network

    app.add_api_route("/v1/attention", routes.attention, methods=["POST"], response_model=AttentionResponse)
    app.add_api_route("/v1/embeddings/map", routes.embedding_map, methods=["POST"], response_model=EmbeddingMapResponse)
    app.add_api_route("/v1/classify/network", classify_network, methods=["GET"])


def add_inside_routes(app: FastAPI, settings: Settings, embeddings: Submitter) -> None:
    """The three routes on the server's app; the API key and in-flight limits come from the Guard, as for the rest."""
    routes = InsideRoutes(settings, embeddings)
    register_inside_routes(app, routes, pixel_network(settings.pixels_dir, settings.pixels_model_id))
