"""A batched model's worker process (the classifier; the embeddings, with the introspection jobs), in two threads:

1) the intake thread puts each `Job` off the channel into the dynamic batcher (a 503 at once past its queue bound);
2) the batch thread takes the next batch, jobs of every API server together, runs it through the worker's hooks
   (decode each, predict the list, encode each) as one tensor operation, and sends one message per API server.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel

from service import metrics
from service.runtime.litserve_adapter import ModelWorker, worker_index
from service.transport.channel import ChannelAddress, WorkerEnd
from service.transport.messages import Answer, BatchReply, Failure, Job
from service.workers.batcher import BatchLimits, DynamicBatcher
from service.workers.threads import IDLE_WAIT_SECONDS, Outbox, intake

logger = logging.getLogger(__name__)

BatchWorkerEnd = WorkerEnd[Job, BatchReply]


@dataclass(frozen=True)
class BatchChannel:
    """One API's channel and its batcher's limits: plain data, copied into the spawned workers."""

    address: ChannelAddress
    limits: BatchLimits


class BatchedWorker(ModelWorker):
    """A worker whose requests run in batches: subclasses give `decode_request` (one job's payload), `predict` (a
    list of decoded requests -> a list of outputs, even at max_batch_size 1) and `encode_response` (one output)."""

    def __init__(self, api_path: str, channel: BatchChannel) -> None:
        super().__init__(api_path=api_path, max_batch_size=channel.limits.max_batch_size)
        self.channel = channel

    def threads(self) -> list[threading.Thread]:
        end: BatchWorkerEnd = WorkerEnd(self.channel.address, worker_index())
        batcher: DynamicBatcher[Job] = DynamicBatcher(self.channel.limits)
        name = self.api_path.rsplit("/", 1)[-1]
        take = functools.partial(queue_job, self.api_path, end, batcher)
        return [
            threading.Thread(target=intake, args=(end, take, name), name=f"{name}-intake", daemon=True),
            threading.Thread(target=run_batches, args=(self, end, batcher), name=f"{name}-batches", daemon=True),
        ]


def queue_job(api_path: str, end: BatchWorkerEnd, batcher: DynamicBatcher[Job], job: Job) -> None:
    """The intake thread's part: into the batcher, or a 503 at once past its queue bound."""
    if not batcher.put(job):
        metrics.get().rejected.labels(api_path, "queue_full").inc()
        why = f"server busy: {batcher.limits.max_queue_size} requests queued for {api_path}; retry shortly"
        end.send(job.server_index, [Failure(job.uid, 503, "overloaded", why)])


def run_batches(api: BatchedWorker, end: BatchWorkerEnd, batcher: DynamicBatcher[Job]) -> None:
    """The batch thread: batcher -> one call of the model -> one message per API server."""
    queue_time = metrics.get().batched_queue_time.labels(api.api_path)
    outbox: Outbox[BatchReply] = Outbox()
    while True:
        batch = batcher.next_batch(IDLE_WAIT_SECONDS)
        if not batch:
            continue
        now = time.monotonic()
        for job in batch:
            queue_time.observe(max(0.0, now - job.arrival))
        for job, reply in zip(batch, run_batch(api, batch), strict=True):
            outbox.add(job.server_index, reply)
        outbox.flush(end)


def run_batch(api: BatchedWorker, jobs: list[Job]) -> list[BatchReply]:
    """The worker's hooks over one batch, one reply a job in order.

    Each job is decoded alone, so that one the schema could not refuse (an HTTPException from decode_request, such
    as a token id outside the vocabulary) fails alone; the others run as one batch, or fail together if the model
    does.
    """
    replies: list[BatchReply | None] = [None] * len(jobs)
    rows, inputs = [], []
    for row, job in enumerate(jobs):
        try:
            inputs.append(api.decode_request(job.payload))
            rows.append(row)
        except HTTPException as exc:
            replies[row] = refusal(job.uid, exc)
    if inputs:
        try:
            outputs = api.predict(inputs)
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
