"""The engine's intake: requests and cancels handed in from other threads, taken by the engine's thread each step."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class _Request(Protocol):
    @property
    def request_id(self) -> str: ...


R = TypeVar("R", bound=_Request)


class RequestQueue(Generic[R]):
    """Waiting requests in arrival order, the ids still live (waiting or running) and the cancels not yet applied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # add() and cancel() come from other threads than the engine's
        self._waiting: deque[R] = deque()
        self._cancels: set[str] = set()
        self._live: set[str] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def has_cancels(self) -> bool:
        return bool(self._cancels)

    def add(self, request: R) -> bool:
        """Queue `request`; False (and nothing queued) when its id is live already."""
        with self._lock:
            if request.request_id in self._live:
                return False
            self._live.add(request.request_id)
            self._waiting.append(request)
            return True

    def cancel(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._live:  # a request that already finished has nothing to cancel
                self._cancels.add(request_id)

    def take_cancels(self) -> tuple[set[str], list[str]]:
        """The cancels asked since the last call, and the waiting requests among them, dropped from the queue."""
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            cancelled = [r.request_id for r in self._waiting if r.request_id in cancels]
            if cancelled:
                self._waiting = deque(r for r in self._waiting if r.request_id not in cancels)
        return cancels, cancelled

    def admit(self, free: int, budget: int | None, to_prefill: Callable[[R], int]) -> list[R]:
        """Take up to `free` requests in arrival order while their prompts, padded to the longest `to_prefill`
        tokens, fit `budget` (None: no bound; the first always comes)."""
        joining: list[R] = []
        width = 0
        with self._lock:
            while self._waiting and len(joining) < free:
                tokens = to_prefill(self._waiting[0])
                if joining and budget is not None and (len(joining) + 1) * max(width, tokens) > budget:
                    break
                joining.append(self._waiting.popleft())
                width = max(width, tokens)
        return joining

    def finished(self, request_ids: set[str]) -> None:
        """`request_ids` left the engine: their ids may be used again, and a cancel of them is moot."""
        with self._lock:
            self._live -= request_ids

    def clear(self) -> list[str]:
        """Drop every waiting request and cancel, forget every live id; return the waiting ids dropped."""
        with self._lock:
            dropped = [r.request_id for r in self._waiting]
            self._waiting.clear()
            self._cancels.clear()
            self._live.clear()
        return dropped
