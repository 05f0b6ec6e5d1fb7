"""The GPT channel (service/gpt_channel.py) in one process: routing, cancels, spreading over workers, back-pressure."""

import asyncio
import json
import subprocess
import sys

import pytest

from service import gpt_channel
from service.gpt_channel import ChannelAddress, ChannelFull, ServerEnd, WorkerEnd
from tests.conftest import REPO


@pytest.fixture
def address():
    addr = ChannelAddress.create(workers=2)
    yield addr
    addr.remove()


def test_requests_reach_a_worker_and_steps_come_back_to_the_api_server_that_sent_them(address):
    async def scenario() -> None:
        workers = [WorkerEnd(address, 0), WorkerEnd(address, 1)]
        api = [ServerEnd(address, 0), ServerEnd(address, 1)]
        try:
            api[1].submit("u1", 1.5, {"prompt_ids": [1, 2]})
            got = [w.receive(timeout_ms=2000) for w in workers]
            item = next(g for g in got if g is not None)
            assert item == (1, "u1", 1.5, {"prompt_ids": [1, 2]})  # tagged with the sender's queue id
            worker = workers[got.index(item)]
            worker.send(item[0], [("u1", {"token": 7}, "ok")])
            assert await asyncio.wait_for(api[1].receive(), 5) == [("u1", {"token": 7}, "ok")]
            # The cancel follows its request to the same worker, even when the other one is less loaded now.
            api[1].cancel("u1", 2.0, {"cancel": True})
            assert worker.receive(timeout_ms=2000) == (1, "u1", 2.0, {"cancel": True})
            api[1].release("u1")
            api[1].cancel("u1", 3.0, {"cancel": True})  # released: nothing to send any more
            assert all(w.receive(timeout_ms=100) is None for w in workers)
        finally:
            for w in workers:
                w.close()
            for a in api:
                a.close()

    asyncio.run(scenario())


def test_new_requests_go_to_the_worker_with_fewest_open(address):
    workers = [WorkerEnd(address, 0), WorkerEnd(address, 1)]
    api = ServerEnd(address, 0)
    try:
        for uid in ("a", "b", "c", "d"):
            api.submit(uid, 0.0, {})
        per_worker: list[list[str]] = [[], []]
        for i, w in enumerate(workers):
            while (item := w.receive(timeout_ms=500)) is not None:
                per_worker[i].append(item[1])
        assert sorted(map(len, per_worker)) == [2, 2]
        home = next(i for i, uids in enumerate(per_worker) if "b" in uids)
        assert home == 1  # ties go to the first worker, so b (second) went to worker 1
        api.release("b")  # worker 1 has one open now, worker 0 two
        api.submit("e", 0.0, {})
        item = workers[1].receive(timeout_ms=2000)
        assert item is not None and item[1] == "e"
        assert workers[0].receive(timeout_ms=100) is None
    finally:
        for w in workers:
            w.close()
        api.close()


def test_a_worker_that_takes_nothing_fills_the_pipe_and_submit_says_so(monkeypatch):
    monkeypatch.setattr(gpt_channel, "HIGH_WATER_MARK", 5)
    address = ChannelAddress.create(workers=1)
    try:
        api = ServerEnd(address, 0)  # no worker ever binds: messages queue up to the high-water mark
        with pytest.raises(ChannelFull):
            for i in range(50):
                api.submit(f"u{i}", 0.0, {})
        assert i >= 5
        api.close()
    finally:
        address.remove()


# Run apart: service.completions imports service.metrics, which refuses to load once prometheus_client is imported
# (tests.helpers imports it in this process).
FULL_CHANNEL = """
import asyncio, json
from service.completions import CompletionsSpec
from service.gpt_channel import ChannelAddress, ChannelFull
from service.schemas.completions import CompletionRequest
from service.settings import Settings


class StuckWorker:  # a ServerEnd whose worker took one request, then nothing: the pipe is full
    def __init__(self):
        self.submitted, self.cancelled, self.released = [], [], []

    def submit(self, uid, arrival, payload):
        if self.submitted:
            raise ChannelFull("stuck")
        self.submitted.append(uid)

    def cancel(self, uid, arrival, payload):
        self.cancelled.append(uid)

    def release(self, uid):
        self.released.append(uid)

    async def receive(self):
        return await asyncio.Event().wait()


async def scenario():
    spec = CompletionsSpec(Settings(), ChannelAddress("/nonexistent"))
    spec.setup_tokenizer()
    stuck = spec._channel = StuckWorker()
    response = await spec.completions(CompletionRequest(prompt="KING.", n=2, max_tokens=4), request=None)
    for task in (spec._fanout, spec._watch):
        task.cancel()
    print(json.dumps({
        "status": response.status_code,
        "retry_after": response.headers.get("retry-after"),
        "code": json.loads(response.body)["error"]["code"],
        "submitted": stuck.submitted, "cancelled": stuck.cancelled, "released": stuck.released,
        "buffers": len(spec._buffers),
    }))


asyncio.run(scenario())
"""


def test_a_full_channel_is_a_503_and_nothing_of_the_request_stays_behind():
    done = subprocess.run([sys.executable, "-c", FULL_CHANNEL], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == 503 and out["retry_after"] == "1" and out["code"] == "worker_unavailable"
    # The first choice went out before the pipe was full: it is cancelled, and no buffer is left behind.
    assert len(out["submitted"]) == 1
    assert out["cancelled"] == out["submitted"] and out["released"] == out["submitted"]
    assert out["buffers"] == 0
