"""The GPT's wire protocol: every message between an API server and a GPT worker, defined once, typed.

    API server --Submit / Cancel--> GPT worker      (service/gpt_client.py sends, service/gpt_worker.py reads)
    main process --ServerGone--> GPT worker          (service/supervisor.py: an API server died)
    GPT worker --list[Token | Failure]--> API server (one list per API server per engine phase: a "step message")

A request ends with exactly one of: a `Token` whose `finish` is set, or a `Failure`. Nothing else ends it on the
wire; the API server's own endings (client gone, deadline, worker died) are decided in gpt_client.py.

Messages are NamedTuples: typed and immutable, and pickled as a class reference plus a tuple, as cheap as the plain
tuples they replace (a step message of 32 tokens: ~40 us to pickle; a dataclass took ~1.6x that, measured).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from model.engine import PromptLogprob
from model.sampling import SamplingParams

# Why a sequence left the engine ("cancelled": the API server asked, or the client went away).
FinishReason = Literal["stop", "length", "cancelled"]


class Submit(NamedTuple):
    """A new generation: already tokenized and checked against the model's context by the API server."""

    queue_id: int  # the sending API server's response queue: where the worker sends this request's tokens
    uid: str
    arrival: float  # time.monotonic() at the API server (one clock for every process of a host)
    prompt_ids: list[int]
    params: SamplingParams


class Cancel(NamedTuple):
    """Stop generating for `uid` and free its batch slot; the worker answers with a `cancelled` Token."""

    queue_id: int
    uid: str


class ServerGone(NamedTuple):
    """From the main process (service/supervisor.py): API server `queue_id` died; cancel every request it sent,
    and drop any that still arrive from it (nobody reads their tokens)."""

    queue_id: int


class Token(NamedTuple):
    """One generated token of `uid` (None when a cancel ended it, or when the prompt was only scored), and `finish`
    on its last one. The first Token of a request that asked for prompt log-probabilities carries them."""

    uid: str
    token: int | None
    logprob: float | None  # the chosen token's log-probability, when asked for
    top: list[tuple[int, float]] | None  # the most likely (token id, logprob) pairs, best first, when asked for
    finish: FinishReason | None
    prompt: list[PromptLogprob] | None = None  # one entry per prompt token but the first


class Failure(NamedTuple):
    """The request ended with an error: its HTTP status, a machine-readable code and a message for the client."""

    uid: str
    status: int
    code: str
    message: str
    param: str | None = None  # the request parameter at fault, if any


WorkerRequest = Submit | Cancel | ServerGone
StepItem = Token | Failure
