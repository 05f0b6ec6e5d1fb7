"""The batched models' transport in one process: the worker's threads (service/workers/batched.py) and the API-server
side (service/transport/batch_client.py) over real ZeroMQ sockets, with a fake model."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service.api.batched import answer
from service.api.errors import bad_request, install_error_handlers
from service.runtime.state import ServerState
from service.transport.batch_client import BatchClient
from service.transport.channel import ChannelAddress, ServerEnd, WorkerEnd
from service.transport.messages import Answer, BatchReply, Failure, Job
from service.workers.batched import BatchChannel, BatchedWorker, BatchWorkerEnd, queue_job, run_batch, run_batches
from service.workers.batcher import BatchLimits, DynamicBatcher
from service.workers.threads import intake

BatchServerEnd = ServerEnd[Job, BatchReply]
Reply = BatchReply


class Body(BaseModel):
    x: int = Field(ge=0, le=100)


class Doubled(BaseModel):
    doubled: int


class Doubler(BatchedWorker):
    """Records every batch it runs; `gate` holds a batch until the test lets it go."""

    def __init__(self) -> None:
        super().__init__("/v1/double", BatchChannel(ChannelAddress("/nonexistent"), BatchLimits(max_batch_size=8)))
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def decode_request(self, request: Body) -> int:
        if request.x == 13:  # what only the worker can know: refused alone, its batch runs
            raise bad_request("x: 13 is unlucky", "x")
        return request.x

    def predict(self, x: list[int]) -> list[int]:
        self.gate.wait(10)
        self.batches.append(list(x))
        return [2 * v for v in x]

    def encode_response(self, output: int) -> Doubled:
        return Doubled(doubled=output)


@pytest.fixture
def address() -> Iterator[ChannelAddress]:
    addr = ChannelAddress.create()
    yield addr
    addr.remove()


def start_worker(api: Doubler, address: ChannelAddress, limits: BatchLimits) -> None:
    """The worker's two threads, as BatchLoop starts them (daemons: they end with the test process)."""
    end: BatchWorkerEnd = WorkerEnd(address, 0)
    batcher: DynamicBatcher[Job] = DynamicBatcher(limits)
    take = functools.partial(queue_job, api.api_path, end, batcher)
    threading.Thread(target=intake, args=(end, take, "double"), daemon=True).start()
    threading.Thread(target=run_batches, args=(api, end, batcher), daemon=True).start()


async def collect(server: BatchServerEnd, replies: list[Reply], count: int) -> None:
    while len(replies) < count:
        replies += await server.receive()


def test_requests_from_both_api_servers_run_in_one_batch_and_each_answer_goes_home(address: ChannelAddress) -> None:
    api = Doubler()
    api.gate.clear()  # the first batch holds the worker while the others queue up
    start_worker(api, address, BatchLimits(max_batch_size=8))
    servers = [BatchServerEnd(address, 0), BatchServerEnd(address, 1)]

    async def scenario() -> list[list[Reply]]:
        servers[0].submit(Job(0, "first", 0.0, Body(x=1)))
        await asyncio.sleep(0.3)  # taken alone into a batch, which waits at the gate
        for i in range(3):
            servers[0].submit(Job(0, f"a{i}", 0.0, Body(x=10 + i)))
            servers[1].submit(Job(1, f"b{i}", 0.0, Body(x=20 + i)))
        await asyncio.sleep(0.3)
        api.gate.set()
        got: list[list[Reply]] = [[], []]
        await asyncio.gather(collect(servers[0], got[0], 4), collect(servers[1], got[1], 3))
        return got

    try:
        got = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        for s in servers:
            s.close()
    answers = [{r.uid: json.loads(r.body)["doubled"] for r in box if isinstance(r, Answer)} for box in got]
    assert answers == [{"first": 2, "a0": 20, "a1": 22, "a2": 24}, {"b0": 40, "b1": 42, "b2": 44}]
    # With no queue delay the first request went alone; the six queued meanwhile, from both servers, went together.
    assert [sorted(b) for b in api.batches] == [[1], [10, 11, 12, 20, 21, 22]]


def test_past_the_queue_bound_a_request_is_answered_503_at_once(address: ChannelAddress) -> None:
    api = Doubler()
    api.gate.clear()
    start_worker(api, address, BatchLimits(max_batch_size=1, max_queue_size=1))
    server = BatchServerEnd(address, 0)

    async def scenario() -> list[Reply]:
        server.submit(Job(0, "running", 0.0, Body(x=1)))
        await asyncio.sleep(0.3)  # in the model, at the gate
        server.submit(Job(0, "queued", 0.0, Body(x=2)))
        server.submit(Job(0, "refused", 0.0, Body(x=3)))
        first = await asyncio.wait_for(server.receive(), 10)  # while the gate still holds the batch
        api.gate.set()
        return first

    try:
        first = asyncio.run(scenario())
    finally:
        server.close()
    why = "server busy: 1 requests queued for /v1/double; retry shortly"
    assert first == [Failure("refused", 503, "overloaded", why)]


def app_for(client: BatchClient) -> FastAPI:
    """The route as service/api/batched.py makes each: the body validated, then sent to the worker."""
    app = FastAPI()
    install_error_handlers(app)

    async def double(body: Body) -> Response:
        return await answer(client, body)

    app.add_api_route("/v1/double", double, methods=["POST"], response_model=Doubled)
    return app


def client_for(address: ChannelAddress, state: ServerState | None = None, timeout: float = 30) -> BatchClient:
    return BatchClient(address, timeout, state)


async def post(client: BatchClient, bodies: list[Any]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app_for(client))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await asyncio.gather(*(http.post("/v1/double", json=body) for body in bodies))


def test_the_route_validates_the_body_then_answers_from_the_worker(address: ChannelAddress) -> None:
    api = Doubler()
    start_worker(api, address, BatchLimits(max_batch_size=8))
    answers = asyncio.run(asyncio.wait_for(post(client_for(address), [{"x": i} for i in range(5)]), 30))
    assert [r.json() for r in answers] == [{"doubled": 2 * i} for i in range(5)]
    [bad] = asyncio.run(asyncio.wait_for(post(client_for(address), [{"x": 101}]), 30))
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "x"
    assert sum(len(b) for b in api.batches) == 5  # the bad body never reached a batch


def test_no_answer_within_the_timeout_is_a_504(address: ChannelAddress) -> None:
    [late] = asyncio.run(asyncio.wait_for(post(client_for(address, timeout=0.2), [{"x": 1}]), 30))
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"


def test_a_dead_process_answers_open_requests_503(address: ChannelAddress) -> None:
    state = ServerState()
    client = client_for(address, state)  # no worker: the request waits

    async def scenario() -> httpx.Response:
        pending = asyncio.ensure_future(post(client, [{"x": 1}]))
        await asyncio.sleep(0.3)
        state.child_died.value = 1
        [answer] = await pending
        return answer

    answer = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "worker_died"


def test_a_request_the_worker_refuses_fails_alone_and_its_batch_runs() -> None:
    api = Doubler()
    jobs = [Job(0, uid, 0.0, Body(x=x)) for uid, x in (("a", 1), ("unlucky", 13), ("b", 2))]
    replies = run_batch(api, jobs)
    assert [r.uid for r in replies] == ["a", "unlucky", "b"]
    assert replies[1] == Failure("unlucky", 400, "invalid_value", "x: 13 is unlucky", "x")
    assert [json.loads(r.body)["doubled"] for r in replies if isinstance(r, Answer)] == [2, 4]
    assert api.batches == [[1, 2]]
