"""What every API server's client of a channel shares (the GPT's, service/gpt_client.py; the batched models',
service/batch_client.py): its end of the channel, the task that delivers what the workers send, and the watch that
ends every open request with a 503 once a server process has died (service/supervisor.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

from service.channel import Addressed, ChannelAddress, ServerEnd, fan_out
from service.gpt_protocol import Failure

if TYPE_CHECKING:  # guards imports the metrics, which the protocol code does not need
    from service.guards import Drain

# How often the watch looks at the shared process-died flag: open requests end within this of a death.
WATCH_SECONDS = 0.25
PROCESS_DIED = "a server process died; the server is restarting"

SubmitT = TypeVar("SubmitT", bound=Addressed)  # what the API server submits
OutT = TypeVar("OutT", bound=Addressed)  # an item the workers send back
OpenT = TypeVar("OpenT")  # what this side keeps of an open request, by uid


class ChannelClient(Generic[SubmitT, OutT, OpenT]):
    """One per API and API-server process; the end is opened on first use (after LitServe's fork: ZeroMQ sockets
    must not cross a fork). Subclasses say how an item reaches its request (`_deliver`) and how a request is ended
    from this side (`_interrupt`)."""

    def __init__(self, address: ChannelAddress, drain: Drain | None = None) -> None:
        self.address = address
        self.drain = drain  # tells when a server process has died; None in tests without one
        self.queue_id = 0  # this API server's response queue id: set by the spec before LitServe forks the process
        self._end: ServerEnd[SubmitT, OutT] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._open: dict[str, OpenT] = {}

    def __getstate__(self) -> dict[str, object]:
        # Pickled with the spec into the spawned worker, which never uses it: no sockets, tasks or open requests.
        return {**self.__dict__, "drain": None, "_end": None, "_tasks": [], "_open": {}}

    def _deliver(self, item: OutT) -> None:
        raise NotImplementedError

    def _interrupt(self, uid: str, failure: Failure) -> None:
        raise NotImplementedError

    def _ensure_open(self) -> ServerEnd[SubmitT, OutT]:
        """This process's end, its fan-out task and its watch, made once (restarted if they ever stop)."""
        if self._end is None:
            self._end = ServerEnd(self.address, self.queue_id)
        if not self._tasks or any(t.done() for t in self._tasks):
            for t in self._tasks:
                t.cancel()
            self._tasks = [asyncio.create_task(fan_out(self._end, self._deliver)), asyncio.create_task(self._watch())]
        return self._end

    async def _watch(self) -> None:
        """A process died: end every open request of this API server with a 503 instead of a hang."""
        while self.drain is None or not self.drain.failed:
            await asyncio.sleep(WATCH_SECONDS)
        for uid in list(self._open):
            self._interrupt(uid, Failure(uid, 503, "worker_died", PROCESS_DIED))
