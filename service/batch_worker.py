"""The worker side of a small batched model (the classifier; the embeddings, with the inside jobs) on the channel.

The API servers send `Job`s over the channel (service/channel.py, a socket folder per API; the messages are
service/batch_protocol.py's). In the worker:

- the intake thread puts each job into the dynamic batcher (service/batcher.py); one the batcher refuses (its queue
  is full) is answered 503 at once;
- the batch thread takes the next batch, jobs from every API server together, runs it through the LitAPI's own
  hooks (decode each, batch, predict, unbatch, encode each: the API stays a plain LitServe batched API) as one
  tensor operation, encodes each answer's JSON body, and sends one message per API server; idle, it blocks in the
  batcher.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import litserve as ls
from fastapi import HTTPException
from pydantic import BaseModel

from service import metrics
from service.batch_protocol import Answer, Job, Reply
from service.batcher import BatchLimits, DynamicBatcher
from service.channel import ChannelAddress, WorkerEnd
from service.gpt_protocol import Failure
from service.litserve_adapter import worker_index
from service.worker_threads import IDLE_WAIT_SECONDS, Outbox, ThreadedLoop, intake

logger = logging.getLogger(__name__)

BatchWorkerEnd = WorkerEnd[Job, Reply]


@dataclass(frozen=True)
class BatchChannel:
    """One API's channel and its batcher's limits: plain data, copied into the spawned workers."""

    address: ChannelAddress
    limits: BatchLimits


class BatchLoop(ThreadedLoop):
    """The intake and batch threads of a batched model's worker."""

    def __init__(self, channel: BatchChannel) -> None:
        super().__init__()
        self.channel = channel

    def threads(self, lit_api: ls.LitAPI) -> list[threading.Thread]:
        end: BatchWorkerEnd = WorkerEnd(self.channel.address, worker_index())
        batcher: DynamicBatcher[Job] = DynamicBatcher(self.channel.limits)
        name = lit_api.api_path.rsplit("/", 1)[-1]
        take = functools.partial(queue_job, lit_api.api_path, end, batcher)
        return [
            threading.Thread(target=intake, args=(end, take, name), name=f"{name}-intake", daemon=True),
            threading.Thread(target=run_batches, args=(lit_api, end, batcher), name=f"{name}-batches", daemon=True),
        ]


def queue_job(api_path: str, end: BatchWorkerEnd, batcher: DynamicBatcher[Job], job: Job) -> None:
    """The intake thread's part: into the batcher, or a 503 at once past its queue bound."""
    if not batcher.put(job):
        metrics.REJECTED.labels(api_path, "queue_full").inc()
        why = f"server busy: {batcher.limits.max_queue_size} requests queued for {api_path}; retry shortly"
        end.send(job.queue_id, [Failure(job.uid, 503, "overloaded", why)])


def run_batches(api: ls.LitAPI, end: BatchWorkerEnd, batcher: DynamicBatcher[Job]) -> None:
    """The batch thread: batcher -> one call of the model -> one message per API server."""
    queue_time = metrics.BATCHED_QUEUE_TIME.labels(api.api_path)
    outbox: Outbox[Reply] = Outbox()
    while True:
        batch = batcher.next_batch(IDLE_WAIT_SECONDS)
        if not batch:
            continue
        now = time.monotonic()
        for job in batch:
            queue_time.observe(max(0.0, now - job.arrival))
        for job, reply in zip(batch, run_batch(api, batch), strict=True):
            outbox.add(job.queue_id, reply)
        outbox.flush(end)


def run_batch(api: ls.LitAPI, jobs: list[Job]) -> list[Reply]:
    """LitServe's hooks, as its batched loop calls them, one reply a job in order.

    Each job is decoded alone, so that one the schema could not refuse (an HTTPException from decode_request, such
    as a token id outside the vocabulary) fails alone; the others run as one batch, or fail together if the model
    does.
    """
    replies: list[Reply | None] = [None] * len(jobs)
    rows, inputs = [], []
    for row, job in enumerate(jobs):
        try:
            inputs.append(api.decode_request(job.payload))
            rows.append(row)
        except HTTPException as exc:
            replies[row] = refusal(job.uid, exc)
    if inputs:
        try:
            if api.max_batch_size > 1:
                outputs = api.unbatch(api.predict(api.batch(inputs)))
            else:  # as in LitServe: an unbatched API gets one decoded request
                outputs = [api.predict(x) for x in inputs]
            for row, output in zip(rows, outputs, strict=True):
                replies[row] = Answer(jobs[row].uid, encode(api.encode_response(output)))
        except Exception as exc:  # the batch fails, the worker goes on
            logger.exception("%s: a batch of %d failed", api.api_path, len(inputs))
            why = f"the model failed on this batch ({type(exc).__name__})"
            for row in rows:
                replies[row] = Failure(jobs[row].uid, 500, "model_error", why)
    return [r for r in replies if r is not None]


def encode(response: Any) -> bytes:
    """The response body as JSON, encoded here in the worker: the API server passes the bytes on as they are."""
    if not isinstance(response, BaseModel):
        raise TypeError(f"encode_response must return a pydantic model, not {type(response).__name__}")
    return response.model_dump_json().encode()


def refusal(uid: str, exc: HTTPException) -> Failure:
    """An HTTPException raised in the worker as the wire's Failure (its OpenAI-shaped detail, when it has one)."""
    detail: Any = exc.detail
    error = detail.get("error") if isinstance(detail, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "invalid_request")
        return Failure(uid, exc.status_code, code, str(error.get("message")), error.get("param"))
    return Failure(uid, exc.status_code, "invalid_request", str(detail))
