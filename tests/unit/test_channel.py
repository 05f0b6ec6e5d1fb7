"""The channel (transport/channel.py) with the GPT's messages, in one process: routing, cancels, back-pressure."""

import asyncio

import pytest

from model.sampling import SamplingParams
from service.transport import channel
from service.transport.channel import ChannelAddress, ChannelFull, ServerEnd, WorkerEnd, broadcast
from service.transport.messages import Cancel, GPTReply, GPTRequest, ServerGone, Submit, Token

GPTWorkerEnd = WorkerEnd[GPTRequest, GPTReply]
GPTServerEnd = ServerEnd[Submit, GPTReply]
PARAMS = SamplingParams(max_tokens=4)


def submit(api: GPTServerEnd, uid: str, arrival: float = 0.0) -> Submit:
    message = Submit(api.server_index, uid, arrival, [1, 2], PARAMS)
    api.submit(message)
    return message


@pytest.fixture
def address():
    addr = ChannelAddress.create(workers=2)
    yield addr
    addr.remove()


def test_requests_reach_a_worker_and_steps_come_back_to_the_api_server_that_sent_them(address):
    async def scenario() -> None:
        workers = [GPTWorkerEnd(address, 0), GPTWorkerEnd(address, 1)]
        api = [GPTServerEnd(address, 0), GPTServerEnd(address, 1)]
        try:
            sent = submit(api[1], "u1", 1.5)
            got = [w.receive(timeout_ms=2000) for w in workers]
            item = next(g for g in got if g is not None)
            assert (
                item == sent and isinstance(item, Submit) and item.server_index == 1
            )  # tagged with the sender's queue
            worker = workers[got.index(item)]
            worker.send(item.server_index, [Token("u1", 7, None, None, None)])
            assert await asyncio.wait_for(api[1].receive(), 5) == [Token("u1", 7, None, None, None)]
            # The cancel follows its request to the same worker, even when the other one is less loaded now.
            api[1].send_after("u1", Cancel(1, "u1"))
            assert worker.receive(timeout_ms=2000) == Cancel(1, "u1")
            api[1].release("u1")
            api[1].send_after("u1", Cancel(1, "u1"))  # released: nothing to send any more
            assert all(w.receive(timeout_ms=100) is None for w in workers)
        finally:
            for w in workers:
                w.close()
            for a in api:
                a.close()

    asyncio.run(scenario())


def test_new_requests_go_to_the_worker_with_fewest_open(address):
    workers = [GPTWorkerEnd(address, 0), GPTWorkerEnd(address, 1)]
    api = GPTServerEnd(address, 0)
    try:
        for uid in ("a", "b", "c", "d"):
            submit(api, uid)
        per_worker: list[list[str]] = [[], []]
        for i, w in enumerate(workers):
            while (item := w.receive(timeout_ms=500)) is not None:
                assert isinstance(item, Submit)
                per_worker[i].append(item.uid)
        assert sorted(map(len, per_worker)) == [2, 2]
        home = next(i for i, uids in enumerate(per_worker) if "b" in uids)
        assert home == 1  # ties go to the first worker, so b (second) went to worker 1
        api.release("b")  # worker 1 has one open now, worker 0 two
        submit(api, "e")
        item = workers[1].receive(timeout_ms=2000)
        assert isinstance(item, Submit) and item.uid == "e"
        assert workers[0].receive(timeout_ms=100) is None
    finally:
        for w in workers:
            w.close()
        api.close()


def test_a_broadcast_from_the_main_process_reaches_every_worker(address):
    workers = [GPTWorkerEnd(address, 0), GPTWorkerEnd(address, 1)]
    try:
        broadcast(address, ServerGone(1))
        assert [w.receive(timeout_ms=2000) for w in workers] == [ServerGone(1), ServerGone(1)]
    finally:
        for w in workers:
            w.close()


def test_a_worker_that_takes_nothing_fills_the_pipe_and_submit_says_so(monkeypatch):
    monkeypatch.setattr(channel, "HIGH_WATER_MARK", 5)
    address = ChannelAddress.create(workers=1)
    try:
        api = GPTServerEnd(address, 0)  # no worker ever binds: messages queue up to the high-water mark
        with pytest.raises(ChannelFull):
            for i in range(50):
                submit(api, f"u{i}")
        assert i >= 5
        api.close()
    finally:
        address.remove()
