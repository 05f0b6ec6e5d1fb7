"""The wire protocol of the small batched models (the classifier, embeddings and the inside jobs): every message
between an API server and their workers, defined once, typed; the sibling of service/gpt_protocol.py, on the same
channel (service/channel.py).

    API server --Job--> batch worker                      (service/batch_client.py sends, service/batch_worker.py reads)
    batch worker --list[Answer | Failure]--> API server   (one list per API server per batch)

A job ends with exactly one `Answer` or one `Failure` (the GPT's: an HTTP status, a code, a message, the field).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from service.gpt_protocol import Failure


class Job(NamedTuple):
    """One request, already validated by the API server (its body's schema, or service/inside.py's checks)."""

    queue_id: int  # the sending API server's response queue: where the worker sends the answer
    uid: str
    arrival: float  # time.monotonic() at the API server (one clock for every process of a host)
    payload: Any  # what the LitAPI's decode_request takes: a request body (a pydantic model), or an inside job


class Answer(NamedTuple):
    """A job's answer: the response body as JSON (the LitAPI's encode_response, encoded in the worker: bytes are
    cheaper to pickle than a model, and the API server passes them on as they are)."""

    uid: str
    body: bytes


Reply = Answer | Failure
