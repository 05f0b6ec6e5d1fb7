"""The Responses API on the shared server, through the official openai SDK: plain, streamed (events and the
`responses.stream` helper), and across turns by passing the earlier output items back as input."""

from __future__ import annotations

import openai
import pytest

from service.settings import Settings

MODEL = Settings().gpt_model_id
ASK = "What say'st thou, noble heart?"


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_the_sdk_creates_a_response_plain_and_streamed(client):
    done = client.responses.create(model=MODEL, input=ASK, max_output_tokens=24, temperature=0)
    assert done.object == "response" and done.status in ("completed", "incomplete")
    assert done.usage is not None and done.usage.output_tokens >= 1
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    events = list(client.responses.create(model=MODEL, input=ASK, max_output_tokens=24, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] == f"response.{done.status}"  # response.completed, or response.incomplete at the bound
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text == done.output_text  # greedy: the same reply either way
    assert final.usage is not None and final.usage.output_tokens == done.usage.output_tokens


def test_the_sdk_stream_helper_gathers_the_final_response(client):
    with client.responses.stream(model=MODEL, input=ASK, max_output_tokens=16, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.status in ("completed", "incomplete")


def test_a_conversation_goes_on_by_passing_the_output_back_as_input(client):
    first_turn = [{"role": "user", "content": ASK}]
    first = client.responses.create(
        model=MODEL, input=first_turn, instructions="A street in Venice.", max_output_tokens=16, temperature=0
    )
    again = {"role": "user", "content": "Speak again."}
    second = client.responses.create(
        model=MODEL,
        input=[*first_turn, *first.output, again],  # output items are valid input
        instructions="A street in Venice.",
        max_output_tokens=16,
        temperature=0,
    )
    # The same conversation through chat completions renders the same prompt: the same greedy reply and usage.
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "A street in Venice."},
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "Speak again."},
        ],
        max_tokens=16,
        temperature=0,
    )
    assert second.output_text == chat.choices[0].message.content
    assert second.usage is not None and chat.usage is not None
    assert second.usage.input_tokens == chat.usage.prompt_tokens


def test_stored_responses_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input=ASK, previous_response_id="resp_0")
    assert refused.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input=ASK, store=True)
    assert refused.value.param == "store"


def test_langchain_chat_openai_on_the_responses_api_invokes_streams_and_goes_on(base_url):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        base_url=f"{base_url}/v1", api_key="unused", model=MODEL, max_tokens=16, temperature=0, use_responses_api=True
    )
    reply = llm.invoke(ASK)
    assert reply.text and reply.response_metadata["status"] in ("completed", "incomplete")
    assert "".join(chunk.text for chunk in llm.stream(ASK)) == reply.text
    # LangChain sends its earlier reply back as an output item of the conversation.
    then = llm.invoke([("human", ASK), reply, ("human", "Speak again.")])
    assert then.response_metadata["status"] in ("completed", "incomplete")
