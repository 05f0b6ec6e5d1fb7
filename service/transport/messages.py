"""Every message between the server's processes, defined once (as SGLang's io_struct.py): the channel sends them.

    API server   --Submit / Cancel-->       GPT worker      (transport/gpt_client.py sends, workers/gpt.py reads)
    main process --ServerGone-->            GPT worker      (runtime/supervisor.py: an API server died)
    GPT worker   --list[Token | Failure]--> API server      (one list per API server per engine phase)
    API server   --Job-->                   batch worker    (transport/batch_client.py sends, workers/batched.py reads)
    batch worker --list[Answer | Failure]-> API server      (one list per API server per batch)

A request ends with exactly one of: a `Token` whose `finish` is set, an `Answer`, or a `Failure`. NamedTuples: typed,
immutable, and as cheap to pickle as plain tuples (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from model.engine import PromptLogprob
from model.sampling import SamplingParams
from service.schemas.introspection import EmbeddingMapRequest

# Why a sequence left the engine ("cancelled": the API server asked, or the client went away).
FinishReason = Literal["stop", "length", "cancelled"]


class Submit(NamedTuple):
    """A new generation: already tokenized and checked against the model's context by the API server."""

    server_index: int  # the sending API server: where the worker sends this request's tokens
    uid: str
    arrival: float  # time.monotonic() at the API server (one clock for every process of a host)
    prompt_ids: list[int]
    params: SamplingParams
    grammar: str | None = None  # the output's grammar (model/grammar.py), checked by the API server


class Cancel(NamedTuple):
    """Stop generating for `uid` and free its batch slot; the worker answers with a `cancelled` Token."""

    server_index: int
    uid: str


class ServerGone(NamedTuple):
    """API server `server_index` died: cancel every request it sent, and drop any that still arrive from it."""

    server_index: int


class Token(NamedTuple):
    """One generated token of `uid` (None when a cancel ended it, or when the prompt was only scored), and `finish`
    on its last one. The first Token of a request that asked for prompt log-probabilities carries them."""

    uid: str
    token: int | None
    logprob: float | None  # the chosen token's log-probability, when asked for
    top: list[tuple[int, float]] | None  # the most likely (token id, logprob) pairs, best first, when asked for
    finish: FinishReason | None
    prompt: list[PromptLogprob] | None = None  # one entry per prompt token but the first


class Job(NamedTuple):
    """One request for a batched model (classifier, embeddings, introspection), already validated by the API server."""

    server_index: int
    uid: str
    arrival: float
    payload: Any  # what the worker's decode_request takes: a request body (a pydantic model) or an introspection job


class AttentionJob(NamedTuple):
    """A Job's payload for /v1/attention: the prompt's ids and the layers and heads to show."""

    ids: list[int]
    layers: list[int]
    heads: list[int]


class MapJob(NamedTuple):
    """A Job's payload for /v1/embeddings/map: the request and its words, context and analogy as token ids."""

    request: EmbeddingMapRequest
    word_ids: list[list[int]]  # each word's tokens, in the order of request.words
    context_ids: list[int] | None
    analogy_ids: list[list[int]] | None


IntrospectionJob = AttentionJob | MapJob


class Answer(NamedTuple):
    """A job's answer: the response body as JSON, encoded in the worker and passed on by the API server as it is."""

    uid: str
    body: bytes


class Failure(NamedTuple):
    """The request ended with an error: its HTTP status, a machine-readable code and a message for the client."""

    uid: str
    status: int
    code: str
    message: str
    param: str | None = None  # the request parameter at fault, if any


GPTRequest = Submit | Cancel | ServerGone  # what a GPT worker reads
GPTReply = Token | Failure  # an item of what a GPT worker sends back
BatchReply = Answer | Failure  # an item of what a batch worker sends back
