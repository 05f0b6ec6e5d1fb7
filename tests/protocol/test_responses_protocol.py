"""OpenAI's Responses API in one process, against a scripted GPT worker behind the real GPT client: the response
object, the typed stream events in order (each checked against the openai SDK's types), the prompt the input and
instructions become, incomplete at max_output_tokens, an error after the start, and what is refused by name."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from model.gpt import decode
from service.api.guard import Guard
from service.runtime.state import ServerState
from service.settings import Settings
from tests.fake_gpt import fake_gpt, says

IMAGE = [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]
REPLY = "I will, my lord.\n\nOTHELLO.\nThen speak."
SPEECH = "I will, my lord."
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def stream_events(body: str) -> list[dict[str, Any]]:
    """Each server-sent event's data, checked to carry its type also as the event's name."""
    found = []
    for block in body.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        event = json.loads(data[6:])
        assert event["type"] == name[7:]
        found.append(event)
    return found


def post(body: dict[str, Any], reply: str = REPLY, **worker: Any) -> tuple[Any, Any]:
    """POST /v1/responses on a fresh fake GPT; the HTTP answer and the fake."""

    async def main() -> Any:
        gpt = fake_gpt(says(reply), **worker)
        async with gpt.http() as http:
            return await http.post("/v1/responses", json=body), gpt

    return asyncio.run(main())


def test_a_plain_response_is_the_speech_with_usage_in_the_sdk_shape():
    r, gpt = post({"input": "What say'st thou?", "temperature": 0.5, "metadata": {"case": "plain"}})
    assert r.status_code == 200, r.text
    body = r.json()
    response = SDKResponse.model_validate(body)  # the openai SDK's own type, strictly validated
    assert response.output_text == SPEECH
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    (item,) = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"] == [{"type": "output_text", "text": SPEECH, "annotations": [], "logprobs": []}]
    (submitted,) = gpt.worker.submitted
    usage = body["usage"]
    assert usage["input_tokens"] == len(submitted.prompt_ids) and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert body["temperature"] == 0.5 and body["metadata"] == {"case": "plain"} and body["incomplete_details"] is None
    assert gpt.client.open_generations == 0


def test_instructions_and_input_items_become_the_chat_prompt():
    items = [
        {"role": "developer", "content": "A street in Venice."},
        {"role": "user", "content": [{"type": "input_text", "text": "What say'st thou?"}]},
        # An earlier output passed back as input, as the SDK dumps it.
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Nothing, my lord.", "annotations": [], "logprobs": []}],
        },
        {"type": "message", "role": "user", "content": "Speak!"},
    ]
    r, gpt = post({"input": items, "instructions": "Night."})
    assert r.status_code == 200, r.text
    prompt = decode(gpt.routes.served.tok, gpt.worker.submitted[0].prompt_ids)
    assert prompt == (
        "[Night.]\n\n[A street in Venice.]\n\nOTHELLO.\nWhat say'st thou?\n\nIAGO.\nNothing, my lord.\n\n"
        "OTHELLO.\nSpeak!\n\nIAGO.\n"
    )
    assert r.json()["instructions"] == "Night."


def test_the_stream_is_the_typed_events_in_order_numbered():
    r, _ = post({"input": "Speak!", "stream": True}, per_step=2)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = stream_events(r.text)
    for event in events:
        EVENTS.validate_python(event)  # every event in the openai SDK's type
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 2
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == SPEECH == events[-4]["text"] == events[-3]["part"]["text"]
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {events[2]["item"]["id"]} == {events[-2]["item"]["id"]}
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["id"] == events[0]["response"]["id"]
    assert final["output"] == [events[-2]["item"]] and final["usage"]["output_tokens"] > 0


def test_max_output_tokens_ends_incomplete_plain_and_streamed():
    r, _ = post({"input": "Speak!", "max_output_tokens": 2})
    body = r.json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 2
    assert body["max_output_tokens"] == 2
    r, _ = post({"input": "Speak!", "max_output_tokens": 2, "stream": True})
    events = stream_events(r.text)
    # OpenAI ends a stream that stopped at the bound with response.incomplete.
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["status"] == "incomplete"
    assert events[-2]["item"]["status"] == "incomplete"


def test_an_error_after_the_start_is_an_error_event_then_response_failed():
    r, gpt = post({"input": "Speak!", "stream": True}, fail_after=2)
    events = stream_events(r.text)
    for event in events:
        EVENTS.validate_python(event)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "engine_error"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"tools": [{"type": "function", "name": "f"}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objec"}}}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"truncation": "auto"}, "truncation"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input.0.type"),
        ({"input": IMAGE}, "input.0.content.0.type"),
        ({"max_output_tokens": 4000}, "max_output_tokens"),
    ],
)
def test_what_is_not_implemented_is_a_400_naming_it(extra, param):
    r, gpt = post({"input": "Speak!", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    assert not gpt.worker.submitted  # nothing was queued


def test_text_format_json_schema_constrains_the_output_and_is_echoed():
    schema = {"type": "object", "properties": {"mood": {"enum": ["merry", "sad"]}}, "required": ["mood"]}
    fmt = {"type": "json_schema", "name": "mood", "schema": schema, "strict": True}
    r, gpt = post({"input": "Speak!", "text": {"format": fmt}}, reply='{"mood": "sad"}')
    assert r.status_code == 200, r.text
    assert r.json()["output"][0]["content"][0]["text"] == '{"mood": "sad"}'
    assert r.json()["text"]["format"] == fmt and gpt.worker.submitted[0].grammar is not None
    SDKResponse.model_validate(r.json())


def test_what_asks_for_nothing_unimplemented_is_accepted():
    extra = {"store": False, "tools": [], "tool_choice": "none", "text": {"format": {"type": "text"}}, "unknown": 1}
    r, _ = post({"input": "Speak!", **extra})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        ({"input": "x" * 40_000}, "input"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ],
)
def test_bad_values_are_a_422_naming_the_field(body, param):
    r, _ = post(body)
    assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text


def test_responses_share_the_in_flight_bound_of_completions():
    settings = Settings()
    state = ServerState()
    state.per_path["/v1/completions"].value = settings.gpt_max_batch_size + settings.gpt_max_waiting  # all taken

    async def main() -> Any:
        gpt = fake_gpt(says(REPLY))
        guarded = httpx.ASGITransport(app=Guard(gpt.app, settings, state))
        async with httpx.AsyncClient(transport=guarded, base_url="http://tinyserve") as http:
            return await http.post("/v1/responses", json={"input": "Speak!"})

    r = asyncio.run(main())
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
    assert "/v1/completions" in r.json()["error"]["message"]


def test_included_logprobs_carry_each_token_plain_and_streamed():
    body = {"input": "Speak!", "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    r, _ = post(body, reply=" naïve")
    assert r.status_code == 200, r.text
    SDKResponse.model_validate(r.json())
    (part,) = r.json()["output"][0]["content"]
    assert b"".join(bytes(t["bytes"]) for t in part["logprobs"]).decode() == part["text"] == " naïve"
    assert all(t["logprob"] == -0.5 and len(t["top_logprobs"]) == 2 for t in part["logprobs"])
    r, _ = post({**body, "stream": True}, reply=" naïve")
    events = stream_events(r.text)
    for event in events:
        EVENTS.validate_python(event)
    streamed = [t for e in events if e["type"] == "response.output_text.delta" for t in e["logprobs"]]
    assert streamed == part["logprobs"] == events[-4]["logprobs"]
    r, _ = post({"input": "Speak!", "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
