"""Embeddings in-process: token-id inputs, base64 vectors, `dimensions`, and bad requests refused by the route."""

import base64
import json
import struct
from typing import Any

import pytest
import torch
from fastapi import HTTPException
from pydantic import ValidationError

from model.gpt import encode
from service.api.batched import check_embeddings
from service.api.gpt.served import ServedGPT
from service.schemas.embeddings import EmbeddingRequest
from service.settings import Settings
from service.transport.channel import ChannelAddress
from service.transport.gpt_client import GPTClient
from service.transport.messages import Answer, Job
from service.workers.batched import BatchChannel, run_batch
from service.workers.batcher import BatchLimits
from service.workers.embeddings import EmbeddingsWorker


@pytest.fixture(scope="module")
def served() -> ServedGPT:
    """The API side's view of the GPT (tokenizer and config; its client is never used here)."""
    return ServedGPT.load(Settings(), GPTClient(ChannelAddress("/nonexistent")))


@pytest.fixture(scope="module")
def api() -> EmbeddingsWorker:
    # No worker threads run here: the channel's address is never bound.
    embeddings = EmbeddingsWorker(Settings(), BatchChannel(ChannelAddress("unused"), BatchLimits(max_batch_size=8)))
    embeddings.setup("cpu")
    return embeddings


def answer(api: EmbeddingsWorker, body: dict[str, Any]) -> dict[str, Any]:
    """One request through the worker's hooks, as the batch thread runs them."""
    request = EmbeddingRequest.model_validate(body)
    return api.encode_response(api.predict([api.decode_request(request)])[0]).model_dump()


def vectors(response: dict[str, Any]) -> list[Any]:
    return [d["embedding"] for d in response["data"]]


def test_base64_decodes_to_the_float_vectors(api):
    texts = ["to be or not to be", "the king is dead"]
    floats = vectors(answer(api, {"input": texts}))
    encoded = vectors(answer(api, {"input": texts, "encoding_format": "base64"}))
    assert all(isinstance(e, str) for e in encoded)
    decoded = [list(struct.unpack(f"<{len(f)}f", base64.b64decode(e))) for e, f in zip(encoded, floats, strict=True)]
    assert decoded == floats and len(floats[0]) == api.width


def test_token_id_inputs_embed_as_their_text(api):
    texts = ["to be or not to be", "the king is dead"]
    ids = [encode(api.tok, t) for t in texts]
    by_text = answer(api, {"input": texts})
    torch.testing.assert_close(torch.tensor(vectors(answer(api, {"input": ids}))), torch.tensor(vectors(by_text)))
    single = answer(api, {"input": ids[0]})
    torch.testing.assert_close(torch.tensor(vectors(single)), torch.tensor(vectors(by_text)[:1]))
    assert single["usage"]["prompt_tokens"] == len(ids[0])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [5, 10**6, 2]}, "input.1"),
        ({"input": [[5, 6], [7, 8, 10**6]]}, "input.1.2"),
        ({"input": "x", "dimensions": 7}, "dimensions"),
    ],
)
def test_what_the_schema_cannot_know_is_a_400_naming_it(served, body, param):
    with pytest.raises(HTTPException) as err:
        check_embeddings(EmbeddingRequest.model_validate(body), served)
    detail: Any = err.value.detail
    assert err.value.status_code == 400 and detail["error"]["param"] == param


def test_dimensions_equal_to_the_width_is_accepted(api):
    assert len(vectors(answer(api, {"input": "x", "dimensions": api.width}))[0]) == api.width


@pytest.mark.parametrize(
    "body", [{"input": []}, {"input": [[]]}, {"input": [1, -2]}, {"input": "x", "encoding_format": "int8"}]
)
def test_schema_refuses_malformed_inputs(body):
    with pytest.raises(ValidationError):
        EmbeddingRequest.model_validate(body)


def test_a_batch_runs_every_request_and_answers_each_in_order(api, served):
    good = EmbeddingRequest.model_validate({"input": "a"})
    bad = EmbeddingRequest.model_validate({"input": [1, 10**6]})
    with pytest.raises(HTTPException) as err:  # refused by the route: it never reaches a batch
        check_embeddings(bad, served)
    assert "outside the vocabulary" in err.value.detail["error"]["message"]  # type: ignore[index]
    other = EmbeddingRequest.model_validate({"input": ["b", "c"]})
    jobs = [Job(0, uid, 0.0, request) for uid, request in (("good", good), ("other", other), ("good2", good))]
    replies = run_batch(api, jobs)
    assert [r.uid for r in replies] == ["good", "other", "good2"]
    assert all(isinstance(r, Answer) for r in replies)
    bodies = [json.loads(r.body) for r in replies if isinstance(r, Answer)]
    assert vectors(bodies[0]) == vectors(bodies[2]) and len(vectors(bodies[1])) == 2
