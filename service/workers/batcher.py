"""A dynamic batcher with Triton's knobs, for the workers of small batched models (the classifier, embeddings).

- `max_batch_size`: the most requests one batch holds.
- `max_queue_delay` (seconds, default 0): how long the oldest queued request may wait for others to join it. At 0
  a batch is whatever is queued when the worker is ready for it: under load requests pile up while a batch runs,
  so batches grow by themselves, and a lone request never waits for company (Triton's default, and its advice: raise
  the delay only when the latency budget allows).
- `max_queue_size`: requests queued beyond it are refused at once (`put` returns False; the caller answers 503),
  instead of waiting without bound.

`put` is called by the worker's intake thread, `next_batch` by its batch thread; the queue holds requests from
every API-server process, so one batch mixes them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int
    max_queue_delay: float = 0.0
    max_queue_size: int = 1024

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_queue_delay < 0:
            raise ValueError(f"bad batch limits: {self}")


@dataclass
class DynamicBatcher(Generic[T]):
    limits: BatchLimits
    _queue: deque[tuple[float, T]] = field(default_factory=deque)  # (time queued, request)
    _ready: threading.Condition = field(default_factory=threading.Condition)

    def put(self, item: T) -> bool:
        """Queue a request; False when the queue is full (refuse it: nothing was queued)."""
        with self._ready:
            if len(self._queue) >= self.limits.max_queue_size:
                return False
            self._queue.append((time.monotonic(), item))
            self._ready.notify()
            return True

    def __len__(self) -> int:
        return len(self._queue)

    def next_batch(self, idle_timeout: float) -> list[T]:
        """The next batch, oldest first; [] if nothing arrived within `idle_timeout` seconds (the worker blocks
        here while idle, using no CPU)."""
        limits = self.limits
        with self._ready:
            if not self._ready.wait_for(lambda: self._queue, timeout=idle_timeout):
                return []
            if limits.max_queue_delay > 0:
                # Wait for company until the oldest request has waited max_queue_delay, or the batch is full.
                deadline = self._queue[0][0] + limits.max_queue_delay
                while len(self._queue) < limits.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
            n = min(len(self._queue), limits.max_batch_size)
            return [self._queue.popleft()[1] for _ in range(n)]
