"""Scoring through completions, in one process against the scripted GPT worker (tests/fake_gpt.py): echo with
logprobs (the prompt's tokens first), max_tokens 0, token-id prompts, and best_of. The scores themselves are the
engine's (tests/unit/test_engine_controls.py) and, end to end, the shipped model's
(tests/server/test_completions_server.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from model.gpt import decode, encode
from service.transport.messages import Submit
from tests.fake_gpt import FakeGPT, fake_gpt, says
from tests.protocol.test_completions_protocol import events

PROMPT = "To be, or not"


def posts(gpt: FakeGPT, *bodies: dict[str, Any]) -> list[tuple[int, Any]]:
    """Status and JSON (a stream: its text) of each completion, in order, on one event loop as a server has."""

    async def main() -> list[tuple[int, Any]]:
        answers = []
        async with gpt.http() as http:
            for body in bodies:
                r = await http.post("/v1/completions", json=body)
                streamed = body.get("stream") and r.status_code == 200
                answers.append((r.status_code, r.text if streamed else r.json()))
        return answers

    return asyncio.run(main())


def post(gpt: FakeGPT, body: dict[str, Any]) -> tuple[int, Any]:
    (answer,) = posts(gpt, body)
    return answer


def test_echo_with_logprobs_scores_the_prompt_first():
    gpt = fake_gpt(says(" to be"))
    status, body = post(gpt, {"prompt": PROMPT, "max_tokens": 2, "logprobs": 1, "echo": True})
    assert status == 200, body
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    prompt_ids = encode(gpt.routes.served.tok, PROMPT)
    n = len(prompt_ids)
    assert choice["text"] == PROMPT + " to be"
    assert lp["tokens"][:n] == [decode(gpt.routes.served.tok, [t]) for t in prompt_ids]
    assert lp["tokens"][n:] == [" to", " be"]
    assert lp["token_logprobs"] == [None] + [-1.0] * (n - 1) + [-0.5, -0.5]
    assert lp["top_logprobs"][0] is None and lp["top_logprobs"][1] == {lp["tokens"][1]: -1.0}
    # Every offset points at its token in the returned text.
    assert all(choice["text"][o:].startswith(t) for o, t in zip(lp["text_offset"], lp["tokens"], strict=True))
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][n] == len(PROMPT)
    assert gpt.worker.submitted[0].params.prompt_logprobs == 1


def test_max_tokens_0_with_echo_scores_only_and_without_echo_is_a_400():
    scored, echoed, refused = posts(
        fake_gpt(says("never")),
        {"prompt": PROMPT, "max_tokens": 0, "logprobs": 0, "echo": True},
        {"prompt": PROMPT, "max_tokens": 0, "echo": True},  # echo alone: the prompt back
        {"prompt": PROMPT, "max_tokens": 0},
    )
    status, body = scored
    assert status == 200, body
    (choice,) = body["choices"]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"][0] is None and len(choice["logprobs"]["tokens"]) > 1
    assert body["usage"]["completion_tokens"] == 0
    status, body = echoed
    assert status == 200 and body["choices"][0]["text"] == PROMPT and body["choices"][0]["logprobs"] is None
    status, body = refused
    assert status == 400 and body["error"]["param"] == "max_tokens"


def test_a_prompt_only_scored_may_fill_the_context():
    gpt = fake_gpt(says("x"))
    full = [5] * gpt.routes.served.context_length
    (status, body), (refused, error) = posts(
        gpt, {"prompt": full, "max_tokens": 0, "logprobs": 0, "echo": True}, {"prompt": full, "max_tokens": 1}
    )
    assert status == 200, body
    assert len(body["choices"][0]["logprobs"]["tokens"]) == len(full)
    status, body = refused, error
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


def test_a_streamed_echo_sends_the_prompt_and_its_logprobs_in_the_first_chunk():
    gpt = fake_gpt(says(" to be"))
    body = {"prompt": PROMPT, "max_tokens": 2, "logprobs": 0, "echo": True, "stream": True}
    (status, text), (_, plain) = posts(gpt, body, {**body, "logprobs": None})
    assert status == 200
    chunks = [json.loads(e)["choices"][0] for e in events(text) if e != "[DONE]"]
    first = chunks[0]
    assert first["text"].startswith(PROMPT) and first["logprobs"]["token_logprobs"][0] is None
    n = len(encode(gpt.routes.served.tok, PROMPT))
    assert len(first["logprobs"]["tokens"]) >= n
    assert "".join(c["text"] for c in chunks) == PROMPT + " to be"
    assert sum(len(c["logprobs"]["tokens"]) for c in chunks) == n + 2
    # Without logprobs the echo still comes first, in a chunk of its own.
    assert json.loads(events(plain)[0])["choices"][0]["text"] == PROMPT


def test_token_id_prompts_are_taken_as_given_and_echoed_as_text():
    gpt = fake_gpt(says(" be"))
    ids = encode(gpt.routes.served.tok, "To be")
    (status, body), (status2, body2) = posts(
        gpt, {"prompt": ids, "max_tokens": 1, "echo": True}, {"prompt": [ids, ids[:1]], "max_tokens": 1}
    )
    assert status == 200, body
    assert gpt.worker.submitted[0].prompt_ids == ids and body["choices"][0]["text"] == "To be be"
    status, body = status2, body2
    assert status == 200 and len(body["choices"]) == 2
    assert [s.prompt_ids for s in gpt.worker.submitted[1:]] == [ids, ids[:1]]


@pytest.mark.parametrize(
    ("prompt", "status", "param"),
    [
        ([1, 2, 100_000], 400, "prompt.2"),
        ([[1], [3, 100_000]], 400, "prompt.1.1"),
        ([], 422, "prompt"),
        ([[]], 422, "prompt"),
        ([-1], 422, "prompt"),
    ],
)
def test_bad_token_id_prompts_name_the_place(prompt, status, param):
    gpt = fake_gpt(says("x"))
    got, body = post(gpt, {"prompt": prompt, "max_tokens": 1})
    assert got == status and body["error"]["param"] == param and not gpt.worker.submitted


def _by_seed(message: Submit) -> str:
    return f" seed {message.params.seed}"


def test_best_of_returns_the_n_of_highest_mean_logprob():
    # The candidate with seed 11 has the best logprob per token, then 12, then 10.
    gpt = fake_gpt(_by_seed, logprob_of=lambda m: {10: -3.0, 11: -0.1, 12: -1.0}[m.params.seed or 0])
    status, body = post(gpt, {"prompt": "x", "max_tokens": 8, "best_of": 3, "n": 2, "seed": 10})
    assert status == 200, body
    assert [c["text"] for c in body["choices"]] == [" seed 11", " seed 12"]
    assert [c["index"] for c in body["choices"]] == [0, 1] and body["choices"][0]["logprobs"] is None
    assert len(gpt.worker.submitted) == 3 and all(s.params.logprobs == 0 for s in gpt.worker.submitted)
    per_candidate = len(encode(gpt.routes.served.tok, " seed 11")) + 1
    assert body["usage"]["completion_tokens"] == 3 * per_candidate  # every candidate was generated


@pytest.mark.parametrize(
    ("extra", "message"), [({"best_of": 1, "n": 2}, "at least n"), ({"best_of": 3, "stream": True}, "streamed")]
)
def test_best_of_below_n_or_streamed_is_a_400(extra, message):
    gpt = fake_gpt(says("x"))
    status, body = post(gpt, {"prompt": "x", "max_tokens": 2, **extra})
    assert status == 400 and body["error"]["param"] == "best_of" and message in body["error"]["message"]
