"""OpenAI completions in one process, against a scripted GPT worker behind the real GPT client (tests/fake_gpt.py):
stop strings across tokens, logprobs, errors mid-stream, the deadline, a client that leaves, a full channel."""

from __future__ import annotations

import asyncio
import json

import pytest

from model.gpt import encode
from service.schemas.completions import CompletionRequest
from service.schemas.sampling import SamplingDefaults
from service.transport.channel import ChannelFull
from service.transport.messages import Failure, Submit
from tests.fake_gpt import FakeGPT, fake_gpt, says

TEXT = "To be, or not to be: that is the question."


def events(body: str) -> list[str]:
    return [line[6:] for line in body.splitlines() if line.startswith("data: ")]


async def settle(gpt: FakeGPT) -> None:
    """Let the client's fan-out hand out whatever the worker sent last."""
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_a_completion_is_the_generated_text_with_usage_and_finish():
    async def main() -> None:
        gpt = fake_gpt(says(TEXT))
        async with gpt.http() as http:
            r = await http.post("/v1/completions", json={"prompt": "KING.", "max_tokens": 64})
            short = await http.post("/v1/completions", json={"prompt": "KING.", "max_tokens": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["text"] == TEXT and body["choices"][0]["finish_reason"] == "stop"
        generated = len(encode(gpt.routes.served.tok, TEXT)) + 1  # and the end-of-text token
        prompt = len(encode(gpt.routes.served.tok, "KING."))
        assert body["usage"] == {
            "prompt_tokens": prompt,
            "completion_tokens": generated,
            "total_tokens": prompt + generated,
        }
        assert short.json()["choices"][0]["finish_reason"] == "length"
        await settle(gpt)
        assert gpt.client.open_generations == 0 and not gpt.worker.cancelled  # ended by the worker: nothing to cancel

    asyncio.run(main())


def test_a_stop_string_across_tokens_cuts_the_text_and_frees_the_slot():
    async def main() -> None:
        gpt = fake_gpt(says(TEXT))
        async with gpt.http() as http:
            plain = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 64, "stop": ["or n"]})
            streamed = await http.post(
                "/v1/completions", json={"prompt": "x", "max_tokens": 64, "stop": "or n", "stream": True}
            )
        choice = plain.json()["choices"][0]
        assert choice["text"] == "To be, " and choice["finish_reason"] == "stop"
        chunks = [json.loads(e) for e in events(streamed.text) if e != "[DONE]"]
        assert "".join(c["choices"][0]["text"] for c in chunks) == "To be, "
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        await settle(gpt)
        # Both were cancelled on the worker as soon as the stop string showed, and released.
        uids = [s.uid for s in gpt.worker.submitted]
        assert gpt.worker.cancelled == uids and gpt.worker.released == uids
        assert gpt.client.open_generations == 0

    asyncio.run(main())


def test_the_stream_sends_each_token_then_usage_then_done():
    async def main() -> None:
        gpt = fake_gpt(says(TEXT), per_step=2)
        body = {"prompt": "x", "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}}
        async with gpt.http() as http:
            r = await http.post("/v1/completions", json=body)
        data = events(r.text)
        assert data[-1] == "[DONE]"
        usage = json.loads(data[-2])
        assert (
            usage["choices"] == []
            and usage["usage"]["completion_tokens"] == len(encode(gpt.routes.served.tok, TEXT)) + 1
        )
        chunks = [json.loads(e) for e in data[:-2]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == TEXT
        assert all(c["object"] == "text_completion" for c in chunks)

    asyncio.run(main())


def test_logprobs_come_as_parallel_lists_with_offsets():
    async def main() -> None:
        gpt = fake_gpt(says(" be or"))
        body = {"prompt": "To", "max_tokens": 2, "logprobs": 2}
        async with gpt.http() as http:
            r = await http.post("/v1/completions", json=body)
        choice = r.json()["choices"][0]
        lp = choice["logprobs"]
        assert choice["text"] == " be or"
        assert lp["tokens"] == [" be", " or"] and lp["token_logprobs"] == [-0.5, -0.5]
        assert lp["text_offset"] == [0, 3]
        assert lp["top_logprobs"][0] == {" be": -0.5, "<|endoftext|>": -1.5}

    asyncio.run(main())


def test_an_engine_error_mid_stream_is_an_error_chunk_and_a_plain_request_a_500():
    async def main() -> None:
        gpt = fake_gpt(says(TEXT), fail_after=3)
        async with gpt.http() as http:
            streamed = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 64, "stream": True})
            plain = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 64})
        data = events(streamed.text)
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["error"]["code"] == "engine_error"
        assert len(data) == 3 + 2  # three tokens, the error, [DONE]
        assert plain.status_code == 500 and plain.json()["error"]["code"] == "engine_error"
        await settle(gpt)
        assert gpt.client.open_generations == 0 and not gpt.worker.cancelled  # the worker ended them itself

    asyncio.run(main())


def test_a_refusal_from_the_worker_is_its_status_and_code():
    async def main() -> None:
        gpt = fake_gpt(lambda _: Failure("", 400, "invalid_request", "prompt holds token ids outside 0..9"))
        async with gpt.http() as http:
            r = await http.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"

    asyncio.run(main())


def test_the_deadline_ends_a_request_and_cancels_it_on_the_worker():
    async def main() -> None:
        gpt = fake_gpt(says(TEXT), step_seconds=0.1)
        async with gpt.http() as http:
            plain = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 64, "timeout": 0.25})
            streamed = await http.post(
                "/v1/completions", json={"prompt": "x", "max_tokens": 64, "timeout": 0.25, "stream": True}
            )
        assert plain.status_code == 408  # the client's own timeout: its request's doing
        err = plain.json()["error"]
        assert err["code"] == "deadline_exceeded" and err["param"] == "timeout"
        data = events(streamed.text)
        assert json.loads(data[-2])["error"]["code"] == "deadline_exceeded" and data[-1] == "[DONE]"
        assert 1 <= len(data) - 2 < len(encode(gpt.routes.served.tok, TEXT))  # some tokens, then the deadline
        await settle(gpt)
        assert gpt.worker.cancelled == [s.uid for s in gpt.worker.submitted]
        assert gpt.client.open_generations == 0

    asyncio.run(main())


def test_a_client_that_leaves_mid_stream_cancels_its_choices():
    async def main() -> None:
        gpt = fake_gpt(says(TEXT), step_seconds=0.01)
        body = CompletionRequest(prompt="x", max_tokens=64, n=2, stream=True)
        response = await gpt.routes.completions.create(body, request=None)  # type: ignore[arg-type]
        stream = response.body_iterator
        for _ in range(3):
            await anext(stream)
        await stream.aclose()  # what Starlette does when the client disconnects
        await settle(gpt)
        uids = [s.uid for s in gpt.worker.submitted]
        assert len(uids) == 2 and sorted(gpt.worker.cancelled) == sorted(uids)
        assert gpt.client.open_generations == 0

    asyncio.run(main())


def test_a_full_channel_is_a_503_and_nothing_of_the_request_stays_behind():
    async def main() -> None:
        gpt = fake_gpt(says(TEXT), step_seconds=1.0)
        take = gpt.worker.submit

        def stuck(message: Submit) -> None:  # takes one request, then its pipe is full
            if gpt.worker.submitted:
                raise ChannelFull("stuck")
            take(message)

        gpt.worker.submit = stuck  # type: ignore[method-assign]
        async with gpt.http() as http:
            r = await http.post("/v1/completions", json={"prompt": "KING.", "n": 2, "max_tokens": 4})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "worker_unavailable"
        (first,) = gpt.worker.submitted
        assert gpt.worker.cancelled == [first.uid] and gpt.worker.released == [first.uid]
        assert gpt.client.open_generations == 0

    asyncio.run(main())


def test_n_choices_get_their_own_seeds_and_run_together():
    async def main() -> None:
        gpt = fake_gpt(says("So."))
        async with gpt.http() as http:
            r = await http.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "seed": 7, "max_tokens": 8})
        assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2, 3]
        assert [s.params.seed for s in gpt.worker.submitted] == [7, 8, 9, 10]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("asked", "server", "expected"),
    [
        ({}, SamplingDefaults(), (1.0, 1.0, 0, 16)),  # OpenAI's defaults
        ({}, SamplingDefaults(temperature=0.7, top_p=0.9, top_k=40, max_tokens=32), (0.7, 0.9, 40, 32)),
        (
            {"temperature": 0, "top_p": 0.5, "top_k": 3, "max_tokens": 5},
            SamplingDefaults(0.7, 0.9, 40, 32),
            (0, 0.5, 3, 5),
        ),
        ({}, SamplingDefaults(max_tokens=1000), (1.0, 1.0, 0, 100)),  # a default is cut to the room left
    ],
)
def test_sampling_parameters_come_from_the_request_then_the_server_then_openai(asked, server, expected):
    body = CompletionRequest(prompt="x", **asked)
    p = body.to_sampling_params(server, room=100, index=0, stop_token_ids=(0,))
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == expected
