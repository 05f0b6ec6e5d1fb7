"""What every API server's client of a channel shares (the GPT's and the batched models'): its end of the channel,
opened in the API-server process on first use, the task that delivers what the workers send, and the watch that ends
every open request with a 503 once a server process has died (runtime/supervisor.py)."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from service.runtime.litserve_adapter import api_server_index
from service.runtime.state import ServerState
from service.transport.channel import Addressed, ChannelAddress, ServerEnd, fan_out
from service.transport.messages import Failure

# How often the watch looks at the shared child-died flag: open requests end within this of a death.
WATCH_SECONDS = 0.25
PROCESS_DIED = "a server process died; the server is restarting"

SubmitT = TypeVar("SubmitT", bound=Addressed)  # what the API server submits
OutT = TypeVar("OutT", bound=Addressed)  # an item the workers send back
OpenT = TypeVar("OpenT")  # what this side keeps of an open request, by uid


class RequestFailed(Exception):
    """A request ended in an error (from the worker, the deadline or a dead process), in an HTTP answer's terms."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class ChannelClient(Generic[SubmitT, OutT, OpenT]):
    """One per model and API-server process. Subclasses say how an item reaches its request (`_deliver`) and how a
    request is ended from this side (`_interrupt`)."""

    def __init__(self, address: ChannelAddress, state: ServerState | None = None) -> None:
        self.address = address
        self.state = state  # tells when a server process has died; None in tests without one
        self.server_index = 0  # this API server's index: known once the end is opened, after the fork
        self._end: ServerEnd[SubmitT, OutT] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._open: dict[str, OpenT] = {}

    def _deliver(self, item: OutT) -> None:
        raise NotImplementedError

    def _interrupt(self, uid: str, failure: Failure) -> None:
        raise NotImplementedError

    def _ensure_open(self) -> ServerEnd[SubmitT, OutT]:
        """This process's end, its fan-out task and its watch, made once (restarted if they ever stop); ZeroMQ
        sockets must not cross a fork, so they are made here, in the API server, not before."""
        if self._end is None:
            self.server_index = api_server_index()
            self._end = ServerEnd(self.address, self.server_index)
        if not self._tasks or any(t.done() for t in self._tasks):
            for t in self._tasks:
                t.cancel()
            self._tasks = [asyncio.create_task(fan_out(self._end, self._deliver)), asyncio.create_task(self._watch())]
        return self._end

    async def _watch(self) -> None:
        """A process died: end every open request of this API server with a 503 instead of a hang."""
        while self.state is None or not self.state.failed:
            await asyncio.sleep(WATCH_SECONDS)
        for uid in list(self._open):
            self._interrupt(uid, Failure(uid, 503, "worker_died", PROCESS_DIED))
