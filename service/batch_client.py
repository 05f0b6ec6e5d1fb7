"""The API-server side of a small batched model's channel (service/batch_worker.py is the worker side).

`BatchClient.call(payload)` sends one validated request to a worker and awaits its answer: the classifier's and the
embeddings' routes call it, and so do the inside routes (service/inside.py), whose jobs the embeddings worker runs.
`BatchSpec` is the LitServe spec of such an API: LitServe still registers the route, forks the API servers and
reports health, but the request goes over the direct channel instead of LitServe's manager queues. The route's body
and answer types are the LitAPI's own (`decode_request`'s parameter, `encode_response`'s return), so FastAPI
validates the body (422 naming the field) before anything is sent, and a bad body never reaches a batch.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from fastapi.responses import Response
from litserve.specs.base import LitSpec

from service.batch_protocol import Job, Reply
from service.channel import ChannelAddress, ChannelFull, ServerEnd
from service.channel_client import ChannelClient
from service.errors import openai_error
from service.gpt_protocol import Failure

if TYPE_CHECKING:  # guards imports the metrics, which the protocol code does not need
    from service.guards import Drain


BatchServerEnd = ServerEnd[Job, Reply]


def _error(status: int, message: str, code: str, param: str | None = None) -> HTTPException:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return HTTPException(status, openai_error(message, param, code, kind))


class BatchClient(ChannelClient[Job, Reply, asyncio.Future[Reply]]):
    """One per API and API-server process (its end, fan-out task and death watch: service/channel_client.py)."""

    def __init__(self, address: ChannelAddress, timeout: float, drain: Drain | None = None) -> None:
        super().__init__(address, drain)
        self.timeout = timeout  # seconds to wait for an answer before a 504

    async def call(self, payload: Any) -> bytes:
        """The worker's answer to `payload` (the JSON response body), or an HTTPException saying why not."""
        end = self._ensure_open()
        uid = str(uuid.uuid4())
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._open[uid] = reply
        try:
            end.submit(Job(self.queue_id, uid, time.monotonic(), payload))
            async with asyncio.timeout(self.timeout):
                answer = await reply
        except ChannelFull as exc:
            raise _error(503, "the model worker is not taking requests", "worker_unavailable") from exc
        except TimeoutError as exc:
            raise _error(504, f"no answer within {self.timeout:g} s", "deadline_exceeded") from exc
        finally:
            self._open.pop(uid, None)
            end.release(uid)
        if isinstance(answer, Failure):
            raise _error(answer.status, answer.message, answer.code, answer.param)
        return answer.body

    def _deliver(self, reply: Reply) -> None:
        waiting = self._open.get(reply.uid)
        if waiting is not None and not waiting.done():  # else given up already (its deadline): dropped
            waiting.set_result(reply)

    def _interrupt(self, uid: str, failure: Failure) -> None:
        self._deliver(failure)


class BatchSpec(LitSpec):
    """The route of a batched API, answered over the channel by `client`."""

    def __init__(self, api_path: str, client: BatchClient) -> None:
        super().__init__()
        self.api_path = api_path
        self.client = client

    # LitServe (0.2.19, LitServer._start_server) writes each API server's response queue id here just before it
    # forks that server: the id the worker answers to.
    @property
    def response_queue_id(self) -> int:
        return self.client.queue_id

    @response_queue_id.setter
    def response_queue_id(self, value: int | None) -> None:
        if value is not None:
            self.client.queue_id = value

    def __getstate__(self) -> dict[str, Any]:
        # The route function is made here, in pre_setup, and cannot be pickled into the worker, which never uses it.
        return {**super().__getstate__(), "_endpoints": []}

    def pre_setup(self, lit_api: Any) -> None:
        # eval_str: a module with `from __future__ import annotations` holds its annotations as strings.
        parameters = inspect.signature(lit_api.decode_request, eval_str=True).parameters
        body_type = next(iter(parameters.values())).annotation
        answer_type = inspect.signature(lit_api.encode_response, eval_str=True).return_annotation

        async def endpoint(body: Any) -> Any:
            # Encoded by the worker: FastAPI would validate the answer against its model and serialize it again.
            return Response(await self.client.call(body), media_type="application/json")

        # FastAPI reads the signature: it validates the body as the LitAPI's request model, and the return type
        # documents the answer in the OpenAPI schema.
        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=body_type)],
            return_annotation=answer_type,
        )
        self.add_endpoint(self.api_path, endpoint, ["POST"])

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output
