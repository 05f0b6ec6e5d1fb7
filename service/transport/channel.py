"""The channel between the API-server processes and a model's workers: ZeroMQ PUSH/PULL over Unix sockets.

    API server --PUSH--> requests-<worker>        (PULL, bound by worker number <worker> of the model)
    worker     --PUSH--> responses-<server_index> (PULL, bound by the API server with that index)

It sends whatever message it is given (transport/messages.py), pickled, and never blocks: a full pipe is
`ChannelFull` on the API side (a 503) and a dropped message with a log line on the worker side. Why not LitServe's
queues: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import zmq
import zmq.asyncio

logger = logging.getLogger(__name__)

# Messages queued per socket before a send fails: far above what a healthy peer lets pile up (one per step).
HIGH_WATER_MARK = 10_000


class Addressed(Protocol):
    """A new request: the id its answers carry."""

    @property
    def uid(self) -> str: ...


InT = TypeVar("InT")  # what a worker receives
SubmitT = TypeVar("SubmitT", bound=Addressed)  # what an API server submits
OutT = TypeVar("OutT")  # an item of what a worker sends back (a message is a list of them)


class ChannelFull(RuntimeError):
    """The worker is not taking requests (gone or stuck): the request cannot be queued."""


@dataclass(frozen=True)
class ChannelAddress:
    """Where the sockets are: plain data, copied into the spawned worker and the forked API servers."""

    folder: str
    workers: int = 1

    @classmethod
    def create(cls, workers: int = 1) -> ChannelAddress:
        # A Unix socket path is limited to ~107 bytes: a short folder under the temp dir, not the working tree.
        return cls(tempfile.mkdtemp(prefix="tinyserve-"), workers)

    def beside(self, name: str, workers: int) -> ChannelAddress:
        """Another API's channel, in a folder inside this one's (removed with it)."""
        folder = os.path.join(self.folder, name)
        os.makedirs(folder, exist_ok=True)
        return ChannelAddress(folder, workers)

    def requests(self, worker: int) -> str:
        return f"ipc://{self.folder}/requests-{worker}"

    def responses(self, server_index: int) -> str:
        return f"ipc://{self.folder}/responses-{server_index}"

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _socket(ctx: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)  # never hold a process's exit for undelivered messages
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    return sock


class WorkerEnd(Generic[InT, OutT]):
    """A worker's side: `receive` from its intake thread only, `send` from its engine or batch thread only."""

    def __init__(self, address: ChannelAddress, worker: int) -> None:
        self._address = address
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._inbox = _socket(self._ctx, zmq.PULL)
        self._inbox.bind(address.requests(worker))
        self._outboxes: dict[int, zmq.Socket[Any]] = {}

    def receive(self, timeout_ms: int) -> InT | None:
        """The next message, or None after `timeout_ms` without one."""
        if self._inbox.poll(timeout_ms) == 0:
            return None
        return cast(InT, self._inbox.recv_pyobj())

    def send(self, server_index: int, message: list[OutT]) -> None:
        sock = self._outboxes.get(server_index)
        if sock is None:  # the first answer to this API server: connect to the socket it bound
            sock = self._outboxes[server_index] = _socket(self._ctx, zmq.PUSH)
            sock.connect(self._address.responses(server_index))
        try:
            sock.send_pyobj(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            logger.error("API server %d is not reading its responses; a message was dropped", server_index)

    def close(self) -> None:
        self._ctx.destroy(linger=0)


def broadcast(address: ChannelAddress, item: object) -> None:
    """Send `item` to every worker of a channel from a process with no end of its own (the main process's
    supervisor)."""
    ctx: zmq.Context[Any] = zmq.Context()
    # Kept until the context goes: a socket collected earlier would close at once, dropping what it holds.
    socks = [_socket(ctx, zmq.PUSH) for _ in range(address.workers)]
    try:
        for worker, sock in enumerate(socks):
            sock.connect(address.requests(worker))
            try:
                sock.send_pyobj(item, flags=zmq.NOBLOCK)
            except zmq.Again:
                logger.error("worker %d of %s is not taking messages; one was dropped", worker, address.folder)
    finally:
        ctx.destroy(linger=1000)  # a one-off sender: give the message a moment to leave before closing


class ServerEnd(Generic[SubmitT, OutT]):
    """An API server's side, used from its event loop only."""

    def __init__(self, address: ChannelAddress, server_index: int) -> None:
        self.address = address
        self.server_index = server_index
        # Sends are non-blocking, so a plain socket serves the event loop; receiving needs the asyncio flavour.
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._actx = zmq.asyncio.Context()
        self._inbox = _socket(self._actx, zmq.PULL)
        self._inbox.bind(address.responses(server_index))
        self._outboxes = [_socket(self._ctx, zmq.PUSH) for _ in range(address.workers)]
        for worker, sock in enumerate(self._outboxes):
            sock.connect(address.requests(worker))
        self._worker_of: dict[str, int] = {}  # uid -> the worker that has it (its cancel must go there too)
        self._open = [0] * address.workers

    def submit(self, message: SubmitT) -> None:
        worker = min(range(len(self._open)), key=self._open.__getitem__)
        self._send(worker, message)
        self._worker_of[message.uid] = worker
        self._open[worker] += 1

    def send_after(self, uid: str, item: object) -> None:
        """Send `item` to the worker that has request `uid` (a cancel must reach the worker that runs it)."""
        worker = self._worker_of.get(uid)
        if worker is not None:
            try:
                self._send(worker, item)
            except ChannelFull:  # the worker is not listening: there is nothing for it to act on either
                pass

    def release(self, uid: str) -> None:
        """Forget a request this API server has finished with."""
        worker = self._worker_of.pop(uid, None)
        if worker is not None:
            self._open[worker] -= 1

    def _send(self, worker: int, item: object) -> None:
        try:
            self._outboxes[worker].send_pyobj(item, flags=zmq.NOBLOCK)
        except zmq.Again as exc:
            raise ChannelFull(f"worker {worker} is not taking requests") from exc

    async def receive(self) -> list[OutT]:
        return cast(list[OutT], await self._inbox.recv_pyobj())

    def close(self) -> None:
        self._ctx.destroy(linger=0)
        self._actx.destroy(linger=0)


async def fan_out(end: ServerEnd[Any, OutT], deliver: Callable[[OutT], None]) -> None:
    """An API server's reading task: every item of every message from the workers to `deliver`. An unreadable
    message loses its items (their requests end by their deadlines), never the task."""
    while True:
        try:
            items = await end.receive()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("reading the channel at %s failed", end.address.folder)
            continue
        for item in items:
            deliver(item)
