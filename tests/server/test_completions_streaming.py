"""Continuous batching and cancellation seen from clients, and the official OpenAI SDK against the server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from service.schemas.completions import Completion, CompletionChoice, Logprobs, StreamChunk
from tests.helpers import metric_value

PROMPT = "KING HENRY.\nNow, lords,"
RUNNING = "tinyserve_gpt_requests_running"
FINISHED = "tinyserve_gpt_requests_finished_total"


async def _stream(client: httpx.AsyncClient, base_url: str, body: dict, drop_after: int | None = None) -> dict:
    """Stream one completion; return its chunk count, timing and end, or drop the connection after N chunks."""
    t0 = time.perf_counter()
    out: dict = {"chunks": 0, "text": "", "finish": None, "first": None, "end": None, "done": False}
    async with client.stream("POST", f"{base_url}/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                out["done"] = True
                break
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            out["chunks"] += 1
            out["first"] = out["first"] or time.perf_counter() - t0
            choice = chunk["choices"][0]
            if choice["index"] == 0:  # with n > 1, the first choice speaks for the request
                out["text"] += choice["text"]
                out["finish"] = choice["finish_reason"] or out["finish"]
            if drop_after is not None and out["chunks"] >= drop_after:
                break  # leaving the block closes the connection mid-stream
    out["end"] = time.perf_counter() - t0
    return out


def test_dropped_streams_stop_generating_while_the_others_complete(base_url):
    async def main() -> None:
        cancelled_before = metric_value(base_url, FINISHED, {"finish_reason": "cancelled"})
        async with httpx.AsyncClient(timeout=120) as client:
            keep = [
                # Six choices each: seconds of decoding even on a fast machine, so they surely outlive the check.
                asyncio.create_task(
                    _stream(client, base_url, {"prompt": PROMPT, "max_tokens": 240, "temperature": 0, "n": 6})
                )
                for _ in range(4)
            ]
            drop = [
                asyncio.create_task(
                    _stream(
                        client,
                        base_url,
                        {"prompt": PROMPT, "max_tokens": 200, "temperature": 0.9, "seed": i},
                        drop_after=3,
                    )
                )
                for i in range(4)
            ]
            dropped = await asyncio.gather(*drop)
            assert all(d["chunks"] == 3 and not d["done"] for d in dropped)
            # Within a few decode steps the engine runs only the sequences of the 4 streams still connected.
            running = None
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                running = metric_value(base_url, RUNNING)
                if running <= 4 * 6:
                    break
                await asyncio.sleep(0.05)
            assert running is not None and running <= 4 * 6
            assert not all(t.done() for t in keep), "the kept streams ended too soon to show anything"
            kept = await asyncio.gather(*keep)
        for k in kept:
            assert k["done"] and k["finish"] in ("length", "stop") and k["text"]
        assert len({k["text"] for k in kept}) == 1  # greedy: the same answer whoever shared the batch
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cancelled = metric_value(base_url, FINISHED, {"finish_reason": "cancelled"}) - cancelled_before
            if cancelled >= 4 and metric_value(base_url, RUNNING) == 0:
                break
            await asyncio.sleep(0.05)
        assert cancelled == 4
        assert metric_value(base_url, RUNNING) == 0

    asyncio.run(main())


def test_a_new_request_joins_the_running_batch(base_url):
    async def main() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            # Three choices each (24 sequences, 240 tokens): they surely run for seconds, even on a fast machine.
            long = [
                asyncio.create_task(
                    _stream(client, base_url, {"prompt": PROMPT, "max_tokens": 240, "temperature": 0, "n": 3})
                )
                for _ in range(8)
            ]
            while sum(t.done() for t in long) == 0 and metric_value(base_url, RUNNING) < 24:
                await asyncio.sleep(0.02)  # until all 8 are in the batch
            t0 = time.perf_counter()
            short = await _stream(client, base_url, {"prompt": "To be", "max_tokens": 3, "temperature": 0})
            joined_at = time.perf_counter() - t0
            still_running = sum(not t.done() for t in long)
            results = await asyncio.gather(*long)
        assert short["done"] and short["first"] is not None
        # It got its tokens while the 8 long streams were still generating, not after them.
        assert still_running == 8, f"{still_running} long streams still running after {joined_at:.2f}s"
        assert all(r["done"] for r in results)

    asyncio.run(main())


def test_openai_sdk_works_unchanged(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    model_id = client.models.list().data[0].id
    done = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=6, temperature=0)
    assert done.choices[0].text and done.usage is not None and done.usage.completion_tokens >= 1
    pieces = [
        c.choices[0].text
        for c in client.completions.create(model=model_id, prompt=PROMPT, max_tokens=6, temperature=0, stream=True)
        if c.choices
    ]
    assert "".join(pieces) == done.choices[0].text
    with_lp = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2)
    lp = with_lp.choices[0].logprobs
    assert lp is not None and lp.top_logprobs is not None and all(len(t) == 2 for t in lp.top_logprobs)
    try:
        client.completions.create(model=model_id, prompt=PROMPT, max_tokens=3, temperature=9)
    except openai.UnprocessableEntityError as exc:
        assert "temperature" in str(exc)
    else:
        raise AssertionError("a bad temperature was accepted")


def test_a_hundred_dropped_streams_leave_nothing_running_and_no_memory_behind(server):
    import psutil

    def rss() -> int:
        procs = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running())

    async def wave(client: httpx.AsyncClient, n: int) -> list[dict]:
        body = {"prompt": PROMPT, "max_tokens": 200, "temperature": 0.8}
        return await asyncio.gather(*(_stream(client, server.url, {**body, "seed": i}, drop_after=2) for i in range(n)))

    async def main() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            await wave(client, 20)  # warm-up: caches and allocator pools reach their working size
            before = rss()
            cancelled_before = metric_value(server.url, FINISHED, {"finish_reason": "cancelled"})
            tokens_before = metric_value(server.url, "tinyserve_gpt_generation_tokens_total")
            for _ in range(5):
                dropped = await wave(client, 20)
                assert all(d["chunks"] == 2 and not d["done"] for d in dropped)
            deadline = time.monotonic() + 10
            while metric_value(server.url, RUNNING) > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert metric_value(server.url, RUNNING) == 0
            assert metric_value(server.url, "tinyserve_gpt_requests_waiting") == 0
            # Each was cancelled, not generated to its end: 200 tokens apiece would be 20,000.
            assert metric_value(server.url, FINISHED, {"finish_reason": "cancelled"}) - cancelled_before == 100
            assert metric_value(server.url, "tinyserve_gpt_generation_tokens_total") - tokens_before < 100 * 20
            grown = rss() / before - 1
            assert grown < 0.10, f"server memory grew {grown:.1%} over 100 dropped streams"

    asyncio.run(main())


TRICKY_TEXTS = ["", " hello", "é ü 日本", "🙂", 'say "hi"', "a\\b", "line\nnext\ttab", "\x01\x1f\x7f", "\u2028"]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
@pytest.mark.parametrize("finish", [None, "stop", "length"])
def test_stream_chunks_are_the_bytes_pydantic_writes(text, finish):
    lp = Logprobs(tokens=[text], token_logprobs=[-0.5], top_logprobs=[{text: -0.5, "x": -1.25}], text_offset=[3])
    for logprobs in (None, lp):
        chunk = StreamChunk("cmpl-1", "tinyserve-gpt", created=123)
        expected = Completion(
            id="cmpl-1",
            created=123,
            model="tinyserve-gpt",
            choices=[CompletionChoice(index=2, text=text, logprobs=logprobs, finish_reason=finish)],
        ).model_dump_json()
        got = chunk(2, text, finish, logprobs)
        assert got == f"data: {expected}\n\n"
        assert json.loads(got[6:]) == json.loads(expected)
