"""What every worker's threads share: the intake thread off the channel, and replies sent one message per API
server. The threads themselves are started by the worker (runtime/litserve_adapter.py, `ModelWorker`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from service.transport.channel import WorkerEnd

logger = logging.getLogger(__name__)

# How long an idle thread blocks (on the channel, the batcher or its wake event) before looking again; work wakes
# it at once.
IDLE_WAIT_SECONDS = 1.0

InT = TypeVar("InT")
OutT = TypeVar("OutT")


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

    def add(self, server_index: int, item: OutT) -> None:
        self._boxes.setdefault(server_index, []).append(item)

    def flush(self, end: WorkerEnd[Any, OutT]) -> None:
        for server_index, box in self._boxes.items():
            end.send(server_index, box)
        self._boxes = {}
