"""Sampling controls through OpenAI completions, in one process against the scripted GPT worker (tests/fake_gpt.py):
what reaches the engine, the bounds, refused parameters, and the client's own timeout not being retried."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.schemas.completions import CompletionRequest
from service.schemas.sampling import SamplingDefaults
from tests.fake_gpt import fake_gpt, says


def post(body: dict[str, Any], step_seconds: float = 0.0) -> tuple[int, dict[str, Any], Any]:
    """Status, JSON and response headers of one completion, and the params the worker got."""

    async def main() -> tuple[int, dict[str, Any], Any]:
        gpt = fake_gpt(says("So."), step_seconds=step_seconds)
        async with gpt.http() as http:
            r = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, **body})
        return r.status_code, r.json() | {"_headers": dict(r.headers)}, [s.params for s in gpt.worker.submitted]

    return asyncio.run(main())


def test_every_control_reaches_the_engine():
    body = {
        "frequency_penalty": 0.5, "presence_penalty": -1.0, "repetition_penalty": 1.3, "min_p": 0.1,
        "logit_bias": {"5": -100, "7": 2.5}, "min_tokens": 2, "stop": ["a"] * 16,
    }  # fmt: skip
    status, _, params = post(body)
    assert status == 200
    (p,) = params
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty, p.min_p) == (0.5, -1.0, 1.3, 0.1)
    assert p.logit_bias == ((5, -100.0), (7, 2.5)) and p.min_tokens == 2 and p.stop_token_ids == (0,)
    _, _, (plain,) = post({})
    assert not plain.uses_controls and plain.min_p == 0


def test_ignore_eos_drops_the_end_of_text_stop():
    _, _, (p,) = post({"ignore_eos": True})
    assert p.stop_token_ids == ()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"frequency_penalty": 10}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 2.5}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"stop": ["a"] * 17}, "stop"),
    ],
)
def test_values_out_of_range_are_a_422_naming_them(body, param):
    status, answer, params = post(body)
    assert status == 422 and answer["error"]["param"] == param and params == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"logit_bias": {"5": 1, "100000": 1}}, "logit_bias.100000"),
        ({"min_tokens": 5}, "min_tokens"),  # more than max_tokens (4)
    ],
)
def test_what_cannot_be_served_is_a_400_naming_it(body, param):
    status, answer, params = post(body)
    assert status == 400 and answer["error"]["param"] == param and params == []
    if param == "suffix":
        assert "not supported" in answer["error"]["message"]


def test_unknown_parameters_stay_ignored_and_best_of_n_is_n():
    status, _, params = post({"some_extension": 1, "user": "me", "best_of": 2, "n": 2})
    assert status == 200 and len(params) == 2


def test_the_clients_own_timeout_is_not_retried():
    status, answer, _ = post({"timeout": 0.2, "max_tokens": 64}, step_seconds=0.1)
    assert status == 408 and answer["_headers"].get("x-should-retry") == "false"


def test_the_conversion_is_the_requests_own():
    body = CompletionRequest(prompt="x", presence_penalty=1.0, ignore_eos=True, logit_bias={"3": -5})
    p = body.to_sampling_params(SamplingDefaults(), room=100, index=0, stop_token_ids=(0,))
    assert (p.presence_penalty, p.stop_token_ids, p.logit_bias) == (1.0, (), ((3, -5.0),))
