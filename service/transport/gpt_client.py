"""The GPT as an API server sees it: `GPTClient.generate(prompt_ids, params, deadline)` -> a `Generation` of tokens.

A generation ends in one place, `Generation.__anext__`: its last token, or `RequestFailed` (a worker's `Failure`, the
deadline, a dead process); closing it, finished or not, cancels what still runs on the worker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from model.sampling import SamplingParams
from service.transport.channel import ChannelFull
from service.transport.client import ChannelClient, RequestFailed
from service.transport.messages import Cancel, Failure, GPTReply, Submit, Token


class WorkerUnavailable(RuntimeError):
    """The GPT worker is not taking requests (its channel is full): nothing was queued."""


@dataclass(frozen=True)
class Deadline:
    """When a request must be done (monotonic clock), and whether the limit was the client's own `timeout`."""

    at: float
    seconds: float
    own: bool

    @classmethod
    def of(cls, server_seconds: float, request_timeout: float | None) -> Deadline:
        own = request_timeout is not None and request_timeout <= server_seconds
        seconds = request_timeout if own and request_timeout is not None else server_seconds
        return cls(time.monotonic() + seconds, seconds, own)

    def failure(self, uid: str) -> Failure:
        # The client's own `timeout` running out is its request's doing (408); the server's deadline is a 504.
        message = f"the request took longer than its deadline of {self.seconds:g} s"
        return Failure(uid, 408 if self.own else 504, "deadline_exceeded", message, "timeout")


@dataclass(eq=False)
class Generation:
    """One generation's token events: `async for token in generation`; `close()` (or `with`) when done with it."""

    client: GPTClient
    uid: str
    queue: deque[GPTReply] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    finished: bool = False  # its last token or the worker's failure has come: nothing is left to cancel
    interrupted: bool = False  # ended from this side: the worker may still be generating it
    closed: bool = False

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Token:
        # Runs once per token: the buffer is read here directly, no queue or task in between.
        while not (self.finished or self.closed):
            if not self.queue:
                self.ready.clear()
                await self.ready.wait()
                continue
            item = self.queue.popleft()
            if isinstance(item, Failure):
                # A failure from the worker ended the request there; one decided here (deadline, dead worker) did
                # not: closing then cancels it on the worker.
                self.finished = not self.interrupted
                self.closed = True
                raise RequestFailed(item)
            self.finished = item.finish is not None
            return item
        raise StopAsyncIteration

    def push(self, item: GPTReply) -> None:
        self.queue.append(item)
        self.ready.set()

    def interrupt(self, failure: Failure) -> None:
        """End the generation from this side, ahead of any token still queued (the deadline, a dead worker)."""
        self.interrupted = True
        self.queue.appendleft(failure)
        self.ready.set()

    def close(self) -> None:
        """Cancel on the worker what still runs, and forget the generation; safe to call more than once."""
        self.closed = True
        self.ready.set()  # wakes a reader waiting for tokens: it ends
        self.client.forget(self, cancel=not self.finished)

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class GenerateClient(Protocol):
    """What the HTTP side needs of the GPT (tests pass a scripted fake)."""

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, deadline: Deadline, grammar: str | None = None
    ) -> Generation: ...


class GPTClient(ChannelClient[Submit, GPTReply, Generation]):
    def generate(
        self, prompt_ids: list[int], params: SamplingParams, deadline: Deadline, grammar: str | None = None
    ) -> Generation:
        """Submit a generation now (so that a full channel is a `WorkerUnavailable` before any answer is sent)."""
        end = self._ensure_open()
        generation = Generation(self, str(uuid.uuid4()))
        self._open[generation.uid] = generation
        try:
            end.submit(Submit(self.server_index, generation.uid, time.monotonic(), prompt_ids, params, grammar))
        except ChannelFull as exc:
            self._open.pop(generation.uid, None)
            raise WorkerUnavailable(str(exc)) from exc
        delay = max(0.0, deadline.at - time.monotonic())
        generation.timer = asyncio.get_running_loop().call_later(
            delay, generation.interrupt, deadline.failure(generation.uid)
        )
        return generation

    def forget(self, generation: Generation, cancel: bool) -> None:
        """Drop a closed generation: stop its timer, cancel it on the worker if asked, free its place."""
        if generation.timer is not None:
            generation.timer.cancel()
        if self._open.pop(generation.uid, None) is None or self._end is None:
            return
        if cancel:
            self._end.send_after(generation.uid, Cancel(self.server_index, generation.uid))
        self._end.release(generation.uid)

    @property
    def open_generations(self) -> int:
        return len(self._open)

    def _deliver(self, item: GPTReply) -> None:
        generation = self._open.get(item.uid)
        if generation is not None:  # else closed already (a stop string, the client gone): dropped
            generation.push(item)

    def _interrupt(self, uid: str, failure: Failure) -> None:
        self._open[uid].interrupt(failure)
