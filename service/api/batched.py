"""The routes of the batched models, POST /v1/classify and POST /v1/embeddings: the body is validated (a 422 naming
the field) and checked against the model (a 400) here, so that a bad request never reaches a batch; then it goes to
a worker over the channel, whose answer is already the JSON body."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from service.api.errors import bad_request, failure_exception, out_of_vocabulary
from service.api.gpt.served import ServedGPT
from service.schemas import ClassifyRequest, ClassifyResponse
from service.schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from service.schemas.inputs import find_out_of_vocabulary
from service.transport.batch_client import BatchClient
from service.transport.client import RequestFailed


async def answer(client: BatchClient, payload: object) -> Response:
    """The worker's answer as it is (FastAPI would validate and serialize a model again), or its error."""
    try:
        return Response(await client.call(payload), media_type="application/json")
    except RequestFailed as exc:
        raise failure_exception(exc.failure) from exc


def check_embeddings(body: EmbeddingRequest, gpt: ServedGPT) -> None:
    """404 for a model not served, as completions answer it; 400 for what the schema cannot know: ids outside the
    vocabulary, a `dimensions` not the model's width."""
    gpt.check_model(body.model)
    bad = find_out_of_vocabulary(body.input, gpt.vocab_size, "input")
    if bad is not None:
        raise out_of_vocabulary(bad, gpt.vocab_size)
    width = int(gpt.config.n_embd)
    if body.dimensions is not None and body.dimensions != width:
        message = f"dimensions: this model's embeddings have {width} dimensions and cannot be shortened"
        raise bad_request(message, "dimensions")


def add_batched_routes(app: FastAPI, classify: BatchClient, embeddings: BatchClient, gpt: ServedGPT) -> None:
    async def classify_route(body: ClassifyRequest) -> Response:
        return await answer(classify, body)

    async def embeddings_route(body: EmbeddingRequest) -> Response:
        check_embeddings(body, gpt)
        return await answer(embeddings, body)

    app.add_api_route("/v1/classify", classify_route, methods=["POST"], response_model=ClassifyResponse)
    app.add_api_route("/v1/embeddings", embeddings_route, methods=["POST"], response_model=EmbeddingResponse)
