"""What OpenAI's published spec (tests/openai_spec/) allows and clients send, in one process against a scripted GPT
worker: nulls for unset options, role `developer`, tools that ask for nothing, names of any letters, any int64
seed, an empty stop string, no null where the spec types a field non-null, and chat's end of speech with
`ignore_eos` and before the speech says anything. The live half (schemathesis, streamed chunks) is
tests/server/test_openai_spec.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from transformers import AutoTokenizer

from model.gpt import GPT_DIR, decode, encode
from service.api.batched import add_batched_routes
from service.api.errors import install_error_handlers
from service.transport.batch_client import BatchClient
from tests.fake_gpt import FakeGPT, fake_gpt, says
from tests.openai_spec import nullable, properties, validator

REPLY = "I will, my lord.\n\nOTHELLO.\nThen speak."
USER = [{"role": "user", "content": "Speak!"}]


def events(body: str) -> list[dict[str, Any]]:
    data = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


async def post(gpt: FakeGPT, path: str, body: dict[str, Any]) -> httpx.Response:
    async with gpt.http() as http:
        return await http.post(path, json=body)


def null_fields(schema_name: str) -> list[str]:
    return sorted(name for name, prop in properties(schema_name).items() if nullable(prop))


@pytest.mark.parametrize(
    ("path", "base", "field"),
    [("/v1/completions", {"prompt": "KING."}, f) for f in null_fields("CreateCompletionRequest")]
    + [("/v1/chat/completions", {"messages": USER}, f) for f in null_fields("CreateChatCompletionRequest")],
)
def test_a_null_where_the_spec_allows_one_is_the_option_not_given(path, base, field):
    async def main() -> None:
        given = {**base, "max_tokens": 4}
        gpt = fake_gpt(says(REPLY))
        r = await post(gpt, path, {**given, field: None})
        assert r.status_code == 200, r.text
        (submitted,) = gpt.worker.submitted
        plain = fake_gpt(says(REPLY))
        unset = {k: v for k, v in given.items() if k != field}
        await post(plain, path, {**unset, "prompt": ""} if field == "prompt" else unset)  # required: its default
        assert submitted.params == plain.worker.submitted[0].params  # exactly the default

    asyncio.run(main())


def test_a_null_prompt_is_openais_default_the_start_of_a_document():
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        assert (await post(gpt, "/v1/completions", {"prompt": None, "max_tokens": 2})).status_code == 200
        assert gpt.worker.submitted[0].prompt_ids == [gpt.routes.served.eot_id]
        missing = await post(gpt, "/v1/completions", {"max_tokens": 2})
        assert missing.status_code == 422 and missing.json()["error"]["param"] == "prompt"  # required by the spec

    asyncio.run(main())


def test_developer_is_the_newer_name_of_system():
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        messages = [{"role": "developer", "content": "A street in Venice."}, *USER]
        assert (await post(gpt, "/v1/chat/completions", {"messages": messages})).status_code == 200
        prompt = decode(gpt.routes.served.tok, gpt.worker.submitted[0].prompt_ids)
        assert prompt.startswith("[A street in Venice.]\n\nOTHELLO.\nSpeak!\n\n")
        # The folder's template says so too: Hugging Face renders the same prompt from it.
        hf = AutoTokenizer.from_pretrained(GPT_DIR).apply_chat_template(
            messages,  # type: ignore[arg-type]  # plain dicts, as users pass them
            add_generation_prompt=True,
            tokenize=False,
        )
        assert hf == prompt

    asyncio.run(main())


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ({"tools": []}, None),
        ({"tool_choice": "none"}, None),
        ({"tools": [], "tool_choice": "none", "functions": []}, None),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}, None),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
        ({"tools": [], "tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ],
)
def test_tools_that_ask_for_nothing_are_accepted_and_any_other_is_refused_by_name(extra, refused):
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        r = await post(gpt, "/v1/chat/completions", {"messages": USER, **extra})
        if refused is None:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 400 and r.json()["error"]["param"] == refused, r.text
            assert not gpt.worker.submitted

    asyncio.run(main())


@pytest.mark.parametrize(
    ("name", "heading"),
    [
        ("Émile", "ÉMILE."),
        ("123", "123."),
        ("two\nlines\n\nIAGO.\nx", "TWO LINES IAGO. X."),  # a name cannot open a speech of its own
        ("Dr.", "DR."),
        (" \t\u2028 ", "OTHELLO."),  # nothing visible: the role's own speaker
        ("{{ messages }}", "{{ MESSAGES }}."),  # rendered as data, never as template code
    ],
)
def test_any_name_is_one_heading_line(name, heading):
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        r = await post(gpt, "/v1/chat/completions", {"messages": [{**USER[0], "name": name}]})
        assert r.status_code == 200, r.text
        prompt = decode(gpt.routes.served.tok, gpt.worker.submitted[0].prompt_ids)
        assert prompt == f"{heading}\nSpeak!\n\nIAGO.\n"

    asyncio.run(main())


@pytest.mark.parametrize(("seed", "engine_seed"), [(-1, 2**63 - 1), (-(2**63), 0), (2**63 - 1, 2**63 - 1), (5, 5)])
def test_any_int64_seed_maps_to_the_engines_range(seed, engine_seed):
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        r = await post(gpt, "/v1/completions", {"prompt": "KING.", "seed": seed, "n": 2, "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert [s.params.seed for s in gpt.worker.submitted] == [engine_seed, (engine_seed + 1) % 2**63]
        too_big = await post(gpt, "/v1/completions", {"prompt": "KING.", "seed": 2**63})
        assert too_big.status_code == 422 and too_big.json()["error"]["param"] == "seed"

    asyncio.run(main())


def test_an_empty_stop_string_is_no_stop():
    async def main() -> None:
        gpt = fake_gpt(says("To be, or not to be."))
        r = await post(gpt, "/v1/completions", {"prompt": "KING.", "stop": "", "max_tokens": 16})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "To be, or not to be."
        r = await post(gpt, "/v1/completions", {"prompt": "KING.", "stop": ["", " or"], "max_tokens": 16})
        assert r.json()["choices"][0]["text"] == "To be,"

    asyncio.run(main())


def test_answers_and_chunks_never_carry_null_where_the_spec_types_a_field_non_null():
    completion = validator("CreateCompletionResponse")
    chat = validator("CreateChatCompletionResponse")
    chunk = validator("CreateChatCompletionStreamResponse")

    async def main() -> None:
        gpt = fake_gpt(says(REPLY), per_step=2)
        plain = (await post(gpt, "/v1/completions", {"prompt": "KING.", "max_tokens": 4})).json()
        completion.validate(plain)
        answer = (await post(gpt, "/v1/chat/completions", {"messages": USER, "logprobs": True})).json()
        chat.validate(answer)
        body = {"messages": USER, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
        chunks = events((await post(gpt, "/v1/chat/completions", body)).text)
        for c in chunks:
            chunk.validate(c)
        assert all("system_fingerprint" not in c for c in [plain, answer, *chunks])
        for index in (0, 1):
            deltas = [ch["delta"] for c in chunks for ch in c["choices"] if ch["index"] == index]
            assert deltas[0] == {"role": "assistant", "content": ""}  # first: the role, and content ""
            assert all(set(d) == {"content"} for d in deltas[1:-1])  # then content only
            assert deltas[-1] == {}  # last: an empty delta beside its finish_reason

    asyncio.run(main())


def test_ignore_eos_runs_chat_past_the_end_of_the_speech_to_max_tokens():
    async def main() -> None:
        gpt = fake_gpt(says(REPLY * 8))
        plain = (await post(gpt, "/v1/chat/completions", {"messages": USER, "max_tokens": 24})).json()
        assert plain["choices"][0]["message"]["content"] == "I will, my lord."
        body = {"messages": USER, "max_tokens": 24, "ignore_eos": True}
        long = (await post(gpt, "/v1/chat/completions", body)).json()
        assert long["usage"]["completion_tokens"] == 24 and long["choices"][0]["finish_reason"] == "length"
        content = long["choices"][0]["message"]["content"]
        assert content == decode(gpt.routes.served.tok, encode(gpt.routes.served.tok, REPLY * 8)[:24])
        assert gpt.worker.submitted[-1].params.stop_token_ids == ()

    asyncio.run(main())


@pytest.mark.parametrize("opening", ["\n\n", "\nOTHELLO.\n", "  \n\nRODERIGO.\n"])
def test_a_chat_reply_is_never_empty_because_it_began_with_an_end(opening):
    async def main() -> None:
        gpt = fake_gpt(says(opening + REPLY))
        for stream in (False, True):
            r = await post(gpt, "/v1/chat/completions", {"messages": USER, "stream": stream, "logprobs": True})
            if stream:
                choices = [ch for c in events(r.text) for ch in c["choices"]]
                content = "".join(ch["delta"].get("content", "") for ch in choices)
                logprobs = [t for ch in choices if ch.get("logprobs") for t in ch["logprobs"]["content"]]
            else:
                content = r.json()["choices"][0]["message"]["content"]
                logprobs = r.json()["choices"][0]["logprobs"]["content"]
            assert content == "I will, my lord."
            assert "".join(t["token"] for t in logprobs).strip() == content  # the dropped opening is not reported
        # End-of-text cannot come first either: the engine masks it for one token.
        assert all(s.params.min_tokens == 1 for s in gpt.worker.submitted)

    asyncio.run(main())


def test_a_response_is_a_reply_as_chat_makes_it_never_empty_and_past_its_end_with_ignore_eos():
    async def main() -> None:
        gpt = fake_gpt(says("\nOTHELLO.\n" + REPLY * 8))
        plain = (await post(gpt, "/v1/responses", {"input": "Speak.", "max_output_tokens": 24})).json()
        assert plain["output"][0]["content"][0]["text"] == "I will, my lord."
        assert gpt.worker.submitted[-1].params.min_tokens == 1
        body = {"input": "Speak.", "max_output_tokens": 24, "ignore_eos": True}
        long = (await post(gpt, "/v1/responses", body)).json()
        assert long["usage"]["output_tokens"] == 24 and long["status"] == "incomplete"
        assert gpt.worker.submitted[-1].params.stop_token_ids == ()

    asyncio.run(main())


def embeddings_app(gpt: FakeGPT) -> httpx.AsyncClient:
    """The embeddings route on the fake's served GPT; these requests are refused before any worker is asked."""
    app = FastAPI()
    nowhere = cast(BatchClient, None)
    add_batched_routes(app, nowhere, nowhere, gpt.routes.served)
    install_error_handlers(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tinyserve")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
        ({"input": ""}, 422, "input"),
        ({"input": []}, 422, "input"),
        ({"input": ["to be", ""]}, 422, "input"),
        ({"input": [[]]}, 422, "input"),
    ],
)
def test_embeddings_refuse_an_unknown_model_and_empty_input_by_name(body, status, param):
    async def main() -> None:
        async with embeddings_app(fake_gpt(says(REPLY))) as http:
            r = await http.post("/v1/embeddings", json=body)
        assert r.status_code == status and r.json()["error"]["param"] == param, r.text

    asyncio.run(main())
