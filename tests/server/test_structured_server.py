"""Structured output on the shared server, with the trained model, through the clients people use: the openai SDK
(`response_format`, `parse`, a named tool streamed) and LangChain's `with_structured_output` (both methods)."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from service.settings import Settings

MESSAGES = [{"role": "user", "content": "Who art thou, and what is thy mood?"}]


class Speaker(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, else the model writes on

    name: str = Field(max_length=16)
    mood: Literal["merry", "wroth", "sad"]
    lines: int = Field(ge=1, le=99)


SCHEMA = Speaker.model_json_schema()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "days": {"type": "integer", "minimum": 1, "maximum": 9},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def ask(seed: int) -> dict[str, Any]:
    """The arguments every request here shares."""
    return {"model": Settings().gpt_model_id, "messages": MESSAGES, "max_tokens": 64, "seed": seed}


def test_json_schema_replies_validate_over_seeds(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "speaker", "schema": SCHEMA, "strict": True}}
    for seed in range(4):
        done = client.chat.completions.create(**ask(seed), response_format=fmt)
        assert done.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(done.choices[0].message.content or ""), SCHEMA)


def test_parse_with_a_pydantic_model_and_streamed_deltas_make_valid_json(client):
    parsed = client.chat.completions.parse(**ask(7), response_format=Speaker)
    assert isinstance(parsed.choices[0].message.parsed, Speaker)
    fmt = {"type": "json_schema", "json_schema": {"name": "speaker", "schema": SCHEMA}}
    stream = client.chat.completions.create(**ask(7), stream=True, response_format=fmt)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert Speaker.model_validate_json(text) == parsed.choices[0].message.parsed  # the same seed, the same reply


def test_a_named_tool_streamed_through_the_sdk(client):
    stream = client.chat.completions.create(
        model=Settings().gpt_model_id,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=48,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_completions_choice_and_regex(base_url):
    body = {"prompt": "KING.\nShall we to battle?\n\nLORD.\n", "max_tokens": 8, "seed": 1}
    choice = httpx.post(f"{base_url}/v1/completions", json={**body, "structured_outputs": {"choice": ["Ay", "No"]}})
    assert choice.json()["choices"][0]["text"] in {"Ay", "No"}
    regex = httpx.post(f"{base_url}/v1/completions", json={**body, "structured_outputs": {"regex": "[0-9]{4}"}})
    assert regex.json()["choices"][0]["text"].isdigit()


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(base_url, method):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        base_url=f"{base_url}/v1", api_key="unused", model=Settings().gpt_model_id, max_tokens=64, seed=3
    )
    answer = llm.with_structured_output(Speaker, method=method).invoke("Who art thou?")
    assert isinstance(answer, Speaker)


def test_parse_with_a_strict_pydantic_tool(client):
    tool = openai.pydantic_function_tool(Speaker)
    name = tool["function"]["name"]
    forced = {"type": "function", "function": {"name": name}}
    done = client.chat.completions.parse(**ask(5), tools=[tool], tool_choice=forced)
    (call,) = done.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Speaker) and done.choices[0].finish_reason == "tool_calls"
