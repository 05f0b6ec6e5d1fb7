"""Structured output and forced tool calls in one process, against a scripted GPT worker that checks each script
against the request's grammar: the grammar each parameter asks for, the shapes of the answers and streams, the
tool messages in the chat template, and what is refused by name."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from transformers import AutoTokenizer

from model.gpt import GPT_DIR, decode, encode, token_bytes
from tests.fake_gpt import FakeGPT, fake_gpt, says

USER = [{"role": "user", "content": "Who art thou?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
DOCUMENT = '{"name": "Iago", "age": 28}'
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "local"]}}, "required": ["zone"]},
    },
}


def data(body: str) -> list[Any]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


async def post(gpt: FakeGPT, path: str, body: dict[str, Any]) -> Any:
    async with gpt.http() as http:
        return await http.post(path, json=body)


@pytest.mark.parametrize(
    ("extra", "script"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "schema": PERSON, "strict": True},
                }
            },
            DOCUMENT,
        ),
        ({"response_format": {"type": "json_object"}}, '{"any": ["thing", 1]}'),
        ({"structured_outputs": {"json": PERSON}}, DOCUMENT),
        ({"structured_outputs": {"choice": ["aye", "nay"]}}, "nay"),
        ({"structured_outputs": {"regex": r"[A-Z]+\n\n[a-z]+"}}, "IAGO\n\nhonest"),  # no speech end cuts it
        ({"structured_outputs": {"grammar": 'root ::= "to " ("be" | "die")'}}, "to die"),
    ],
)
def test_chat_replies_under_each_kind_of_grammar(extra, script):
    async def main() -> None:
        gpt = fake_gpt(says(script))
        r = await post(gpt, "/v1/chat/completions", {"messages": USER, **extra})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == script and choice["finish_reason"] == "stop"
        assert gpt.worker.submitted[0].grammar is not None

    asyncio.run(main())


def test_completions_take_structured_outputs_and_a_plain_request_has_no_grammar():
    async def main() -> None:
        gpt = fake_gpt(says("nay"))
        body = {"prompt": "KING.", "structured_outputs": {"choice": ["aye", "nay"]}, "n": 2}
        r = await post(gpt, "/v1/completions", body)
        assert r.status_code == 200, r.text
        assert [c["text"] for c in r.json()["choices"]] == ["nay", "nay"]
        r = await post(gpt, "/v1/completions", {"prompt": "KING."})
        assert r.status_code == 200 and gpt.worker.submitted[-1].grammar is None

    asyncio.run(main())


def test_a_script_the_grammar_forbids_fails():
    """The fake checks scripts against the grammar, so the tests above do test the grammar sent."""

    async def main() -> None:
        gpt = fake_gpt(says("perhaps"))
        r = await post(gpt, "/v1/chat/completions", {"messages": USER, "structured_outputs": {"choice": ["aye"]}})
        assert r.status_code == 500

    asyncio.run(main())


def test_a_call_among_several_cut_short_keeps_its_name_and_what_arguments_came():
    whole = '{"name": "get_time", "arguments": {"zone": "local"}}'

    async def main() -> None:
        gpt = fake_gpt(says(whole))
        tok = gpt.routes.served.tok
        ids = encode(tok, whole)
        for cut in range(2, len(ids) - 1, 2):
            body = {"messages": USER, "tools": [WEATHER, TIME], "tool_choice": "required", "max_tokens": cut}
            r = await post(gpt, "/v1/chat/completions", body)
            choice = r.json()["choices"][0]
            (call,) = choice["message"]["tool_calls"]
            named = decode(tok, ids[:cut]).startswith('{"name": "get_time"')
            assert choice["finish_reason"] == "length" and call["function"]["name"] == ("get_time" if named else "")
            assert '{"zone": "local"}'.startswith(call["function"]["arguments"])
            r = await post(gpt, "/v1/chat/completions", {**body, "stream": True})
            deltas = [c["choices"][0]["delta"] for c in data(r.text) if c["choices"]]
            pieces = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
            assert "".join(p["function"]["arguments"] for p in pieces) == call["function"]["arguments"]

    asyncio.run(main())


def test_max_tokens_cuts_the_document_with_finish_reason_length():
    async def main() -> None:
        gpt = fake_gpt(says(DOCUMENT))
        body = {"messages": USER, "structured_outputs": {"json": PERSON}, "max_tokens": 3}
        r = await post(gpt, "/v1/chat/completions", body)
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length" and DOCUMENT.startswith(choice["message"]["content"])

    asyncio.run(main())


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "objec"}}}},
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"structured_outputs": {"regex": "a("}}, "structured_outputs.regex"),
        ({"structured_outputs": {"grammar": "root ::= nowhere"}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"choice": ["a"]}, "response_format": {"type": "json_object"}}, "structured_outputs"),
        ({"tools": [WEATHER]}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_a_grammar_that_cannot_be_served_is_a_400_naming_it(extra, param):
    async def main() -> None:
        gpt = fake_gpt(says(DOCUMENT))
        r = await post(gpt, "/v1/chat/completions", {"messages": USER, **extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        assert not gpt.worker.submitted

    asyncio.run(main())


@pytest.mark.parametrize(
    "outputs",
    [{"choice": ["a"], "regex": "a"}, {}, {"structural_tag": "x"}],
)
def test_structured_outputs_takes_exactly_one_known_kind(outputs):
    async def main() -> None:
        gpt = fake_gpt(says("a"))
        r = await post(gpt, "/v1/completions", {"prompt": "x", "structured_outputs": outputs})
        assert r.status_code == 422 and "structured_outputs" in r.text

    asyncio.run(main())


def test_a_named_tool_is_called_with_arguments_under_its_schema():
    async def main() -> None:
        gpt = fake_gpt(says('{"city": "Verona"}'))
        body = {
            "messages": USER,
            "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
        r = await post(gpt, "/v1/chat/completions", body)
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Verona"}'}

        r = await post(gpt, "/v1/chat/completions", {**body, "stream": True})
        chunks = data(r.text)
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        head = deltas[0]["tool_calls"][0]
        assert deltas[0]["role"] == "assistant" and head["function"]["name"] == "get_weather" and head["id"]
        pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d]
        assert len(pieces) > 2 and json.loads("".join(pieces)) == {"city": "Verona"}
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    asyncio.run(main())


def test_required_picks_one_of_several_tools():
    async def main() -> None:
        gpt = fake_gpt(says('{"name": "get_time", "arguments": {"zone": "utc"}}'))
        body = {"messages": USER, "tools": [WEATHER, TIME], "tool_choice": "required"}
        r = await post(gpt, "/v1/chat/completions", body)
        (call,) = r.json()["choices"][0]["message"]["tool_calls"]
        assert call["function"] == {"name": "get_time", "arguments": '{"zone": "utc"}'}
        r = await post(gpt, "/v1/chat/completions", {**body, "stream": True})
        deltas = [c["choices"][0]["delta"] for c in data(r.text) if c["choices"]]
        pieces = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        assert pieces[0]["id"].startswith("call_") and pieces[0]["function"]["name"] == "get_time"
        assert len(pieces) > 2 and all("id" not in p and "name" not in p["function"] for p in pieces[1:])
        assert "".join(p["function"]["arguments"] for p in pieces) == call["function"]["arguments"]

    asyncio.run(main())


def test_tool_calls_and_tool_answers_are_stage_directions_in_the_prompt():
    async def main() -> None:
        gpt = fake_gpt(says("Fair, my lord."))
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Verona"}'},
        }
        messages: list[dict[str, Any]] = [
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Fair and warm"},
        ]
        r = await post(gpt, "/v1/chat/completions", {"messages": messages})
        assert r.status_code == 200, r.text
        prompt = decode(gpt.routes.served.tok, gpt.worker.submitted[0].prompt_ids)
        expected = 'IAGO.\n[Calls get_weather {"city": "Verona"}]\n\n[get_weather answers: Fair and warm]\n\nIAGO.\n'
        assert prompt.endswith(expected)
        hf_messages = [*messages[:2], {**messages[2], "name": "get_weather"}]  # the server names the answer's call
        hf = AutoTokenizer.from_pretrained(GPT_DIR).apply_chat_template(
            hf_messages,  # type: ignore[arg-type]
            add_generation_prompt=True,
            tokenize=False,
        )
        assert hf == prompt

    asyncio.run(main())


def test_the_mask_endpoint_replays_a_reply_through_its_grammar():
    async def main() -> None:
        gpt = fake_gpt(says(""))
        tok = gpt.routes.served.tok

        def as_bytes(text: str) -> list[int]:
            (token,) = encode(tok, text)
            return list(token_bytes(tok, token))

        outputs = {"choice": ["Ay", "No"]}
        steps = [{"chosen": as_bytes("Ay"), "candidates": [as_bytes("No"), as_bytes("I"), as_bytes("A")]}]
        r = await post(gpt, "/v1/structured/mask", {"structured_outputs": outputs, "steps": steps})
        assert r.json()["steps"] == [{"allowed": [True, False, True]}]
        bad = [{"chosen": as_bytes("I"), "candidates": []}]
        r = await post(gpt, "/v1/structured/mask", {"structured_outputs": outputs, "steps": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "steps.0.chosen"
        unknown = [{"chosen": [255, 255, 255], "candidates": []}]
        r = await post(gpt, "/v1/structured/mask", {"structured_outputs": outputs, "steps": unknown})
        assert r.status_code == 400 and r.json()["error"]["param"] == "steps.0.chosen"

    asyncio.run(main())


@pytest.mark.parametrize(("strict", "status"), [(False, 200), (True, 500)])
def test_a_strict_function_takes_no_property_it_does_not_name(strict, status):
    async def main() -> None:
        gpt = fake_gpt(says('{"city": "Verona", "weather": "fair"}'))  # the fake fails a script the grammar forbids
        tool = {**WEATHER, "function": {**WEATHER["function"], "strict": strict}}
        body = {"messages": USER, "tools": [tool], "tool_choice": "required"}
        r = await post(gpt, "/v1/chat/completions", body)
        assert r.status_code == status, r.text

    asyncio.run(main())
