"""OpenAI's published spec as the contract, against the live server (the spec: tests/openai_spec/).

schemathesis generates requests from the spec for the operations served here, `model` pinned to ours and token
counts bounded (tests/server/openai_spec_hooks.py), and requires no 5xx and every 200 answer valid against the spec's
schema (status codes outside the spec's list are expected: our 4xx are documented in docs/api.md). It does not read
the completions' server-sent events, so every streamed chunk is checked here against the spec's schemas with
jsonschema. Where the spec is narrower than OpenAI's own wire, `ERRATA` says so, each with its reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import sse_events
from tests.openai_spec import COMPLETION_CHUNK_ERRATA, ERRATA, spec, validator, with_errata

OPERATIONS: tuple[str, ...] = tuple(spec()["info"]["x-trimmed-to"])  # every operation served here
REPO = Path(__file__).resolve().parents[2]


def test_the_spec_generated_requests_get_no_server_error_and_valid_answers(base_url, tmp_path):
    contract = with_errata(spec(), ERRATA)
    # schemathesis would check each event, not its `data`, against the chunk schema: the chunks are checked below.
    for path in ("/chat/completions", "/responses"):
        del contract["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(contract))
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    operations = [arg for op in OPERATIONS for arg in ("--include-operation-id", op)]
    out = subprocess.run(
        [
            st, "run", str(document), "--url", f"{base_url}/v1", *operations,
            "--max-examples", "30",
            "--seed", "1",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--request-timeout", "60",
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.server.openai_spec_hooks", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert f"Tested: {len(OPERATIONS)}" in out.stdout, out.stdout[-3000:]


def chunks(base_url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        data = list(sse_events(r.iter_lines()))
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


STREAMS = [
    {},
    {"stream_options": {"include_usage": True}},
    {"n": 3, "stream_options": {"include_usage": True}},
    {"stream_options": {"include_usage": False}, "seed": -1, "stop": ""},
]


@pytest.mark.parametrize("extra", [*STREAMS, {"logprobs": 3, "n": 2}, {"echo": True, "logprobs": 2}])
def test_every_streamed_completion_chunk_follows_the_spec(base_url, extra):
    check = validator("CreateCompletionResponse", COMPLETION_CHUNK_ERRATA)
    body = {"model": "tinyserve-gpt", "prompt": "KING.\n", "max_tokens": 12, "stream": True, **extra}
    got = chunks(base_url, "/v1/completions", body)
    for chunk in got:
        check.validate(chunk)
    if extra.get("stream_options", {}).get("include_usage"):
        assert got[-1]["choices"] == [] and got[-1]["usage"]["completion_tokens"] > 0
    finished = [c["choices"][0] for c in got if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert len(finished) == extra.get("n", 1)  # one last chunk a choice, its finish_reason set


@pytest.mark.parametrize(
    "extra",
    [*STREAMS, {"logprobs": True, "top_logprobs": 2, "n": 2}, {"ignore_eos": True, "logprobs": True}],
)
def test_every_streamed_chat_chunk_follows_the_spec(base_url, extra):
    check = validator("CreateChatCompletionStreamResponse")
    messages = [{"role": "developer", "content": "A room."}, {"role": "user", "name": "Émile", "content": "Speak!"}]
    body = {"model": "tinyserve-gpt", "messages": messages, "max_tokens": 12, "stream": True, **extra}
    got = chunks(base_url, "/v1/chat/completions", body)
    for chunk in got:
        check.validate(chunk)
        assert "system_fingerprint" not in chunk
    if extra.get("stream_options", {}).get("include_usage"):
        assert got[-1]["choices"] == [] and got[-1]["usage"]["completion_tokens"] > 0
    for index in range(extra.get("n", 1)):
        deltas = [(ch["delta"], ch["finish_reason"]) for c in got for ch in c["choices"] if ch["index"] == index]
        assert deltas[0] == ({"role": "assistant", "content": ""}, None)
        assert all(set(d) == {"content"} and f is None for d, f in deltas[1:-1])
        assert deltas[-1][0] == {} and deltas[-1][1] in ("stop", "length")


def test_chat_with_ignore_eos_gives_the_tokens_asked_for(base_url):
    # A length-controlled benchmark's request (guidellm and aiperf send ignore_eos): 64 tokens asked, 64 given.
    for seed in (3, 4, 5):
        body = {"messages": [{"role": "user", "content": "Speak!"}], "max_tokens": 64, "ignore_eos": True, "seed": seed}
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
        assert r["usage"]["completion_tokens"] == 64 and r["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"instructions": "Speak briefly.", "max_output_tokens": 200},
        {"input": [{"role": "user", "content": "Hark!"}]},
    ],
)
def test_every_response_and_streamed_response_event_follows_the_spec(base_url, extra):
    body = {"model": "tinyserve-gpt", "input": "KING.", "max_output_tokens": 12, **extra}
    answer = httpx.post(f"{base_url}/v1/responses", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    validator("Response").validate(answer.json())
    check = validator("ResponseStreamEvent")
    with httpx.stream("POST", f"{base_url}/v1/responses", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(d) for d in sse_events(r.iter_lines())]
    for event in events:
        check.validate(event)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
