"""The API-server side of a batched model's channel: `BatchClient.call(payload)` sends one validated request to a
worker and awaits its answer, the response body as JSON (the classify, embeddings and introspection routes)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from service.runtime.state import ServerState
from service.transport.channel import ChannelAddress, ChannelFull
from service.transport.client import ChannelClient, RequestFailed
from service.transport.messages import BatchReply, Failure, Job


class BatchClient(ChannelClient[Job, BatchReply, asyncio.Future[BatchReply]]):
    """One per batched model and API-server process (its end, fan-out task and death watch: transport/client.py)."""

    def __init__(self, address: ChannelAddress, timeout: float, state: ServerState | None = None) -> None:
        super().__init__(address, state)
        self.timeout = timeout  # seconds to wait for an answer before a 504

    async def call(self, payload: Any) -> bytes:
        """The worker's answer to `payload` (the JSON response body); raises `RequestFailed` saying why not."""
        end = self._ensure_open()
        uid = str(uuid.uuid4())
        reply: asyncio.Future[BatchReply] = asyncio.get_running_loop().create_future()
        self._open[uid] = reply
        try:
            end.submit(Job(self.server_index, uid, time.monotonic(), payload))
            async with asyncio.timeout(self.timeout):
                answer = await reply
        except ChannelFull as exc:
            failure = Failure(uid, 503, "worker_unavailable", "the model worker is not taking requests")
            raise RequestFailed(failure) from exc
        except TimeoutError as exc:
            raise RequestFailed(Failure(uid, 504, "deadline_exceeded", f"no answer within {self.timeout:g} s")) from exc
        finally:
            self._open.pop(uid, None)
            end.release(uid)
        if isinstance(answer, Failure):
            raise RequestFailed(answer)
        return answer.body

    def _deliver(self, reply: BatchReply) -> None:
        waiting = self._open.get(reply.uid)
        if waiting is not None and not waiting.done():  # else given up already (its deadline): dropped
            waiting.set_result(reply)

    def _interrupt(self, uid: str, failure: Failure) -> None:
        self._deliver(failure)
