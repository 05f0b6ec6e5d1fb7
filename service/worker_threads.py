"""The engine side every worker shares (the GPT's, the classifier's, the embeddings'): threads of its own behind a
LitServe loop, an intake thread off the channel, replies sent one message per API server, idle threads blocked.

Why threads and not LitServe's loops: their intake takes each request off a manager queue and answers through the
manager, and each step is an `asyncio.to_thread` hop whose completion waits for the event loop and the GIL (measured
for the GPT: README, Performance; for the classifier: README, Benchmark). Here LitServe still spawns the worker and
calls the LitAPI's `setup`; then the loop starts the threads and its event loop only watches them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from queue import Queue
from typing import Any, Generic, TypeVar

import litserve as ls
from litserve.callbacks import CallbackRunner
from litserve.loops.base import LitLoop
from litserve.specs.base import LitSpec
from litserve.transport.base import MessageTransport

from service.channel import WorkerEnd

logger = logging.getLogger(__name__)

# How long an idle thread blocks (on the channel, the batcher or its wake event) before looking again; work wakes
# it at once.
IDLE_WAIT_SECONDS = 1.0

InT = TypeVar("InT")
OutT = TypeVar("OutT")


class ThreadedLoop(LitLoop):
    """Starts the threads `threads(lit_api)` makes, in the worker; LitServe's event loop only watches them."""

    def __init__(self) -> None:
        super().__init__()
        self._threads: list[threading.Thread] = []

    def threads(self, lit_api: ls.LitAPI) -> list[threading.Thread]:
        """The worker's threads, made once its LitAPI is set up (in the worker process)."""
        raise NotImplementedError

    async def schedule_task(
        self, lit_api: ls.LitAPI, lit_spec: LitSpec | None, request_queue: Queue, transport: MessageTransport
    ) -> None:
        self._threads = self.threads(lit_api)
        for t in self._threads:
            t.start()
        # LitServe's request queue for this path stays empty (requests come over the channel); stay scheduled.
        await asyncio.Event().wait()

    async def run(
        self,
        lit_api: ls.LitAPI,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: MessageTransport,
        workers_setup_status: dict[int, str],
        callback_runner: CallbackRunner,
    ) -> None:
        # Never returns: LitServe's wrapper would then ask the LitAPI for `has_active_requests`, which a plain
        # batched API lacks. The threads catch what they can survive, so a dead one is a bug: end the process, and
        # the server's supervisor (service/supervisor.py) fails open requests and stops for a restart.
        while True:
            await asyncio.sleep(0.5)
            if self._threads and not all(t.is_alive() for t in self._threads):
                logger.critical("a worker thread of %s died; stopping the worker", lit_api.api_path)
                os._exit(1)


def intake(end: WorkerEnd[InT, Any], handle: Callable[[InT], None], name: str) -> None:
    """An intake thread: each message off the channel to `handle`; one that fails is logged, never the end of it."""
    while True:
        try:
            item = end.receive(timeout_ms=int(IDLE_WAIT_SECONDS * 1000))
            if item is not None:
                handle(item)
        except Exception:
            logger.exception("%s intake failed on an item", name)


class Outbox(Generic[OutT]):
    """Replies gathered by the API server they go to, sent as one message each: not one message per reply."""

    def __init__(self) -> None:
        self._boxes: dict[int, list[OutT]] = {}

    def add(self, queue_id: int, item: OutT) -> None:
        self._boxes.setdefault(queue_id, []).append(item)

    def flush(self, end: WorkerEnd[Any, OutT]) -> None:
        for queue_id, box in self._boxes.items():
            end.send(queue_id, box)
        self._boxes = {}
