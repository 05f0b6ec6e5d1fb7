"""Chat on the shared server, through the clients people use: the official openai SDK and LangChain's ChatOpenAI."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from model.gpt import load_tokenizer
from service.settings import Settings

MESSAGES = [{"role": "user", "content": "What say'st thou, noble heart?"}]


def speech(text: str) -> str:
    """`text` up to where the speech ends: a blank line, or a new line then a speaker's heading."""
    end = re.search(r"\n(?:\n|[A-Z][A-Z' -]+\.\n)", "\n" + text)
    return text if end is None else text[: max(0, end.start() - 1)]


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_the_sdk_chats_plain_and_streamed(client):
    model = client.models.retrieve(Settings().gpt_model_id).id
    done = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, temperature=0)
    (choice,) = done.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.completion_tokens >= 1
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == done.usage.completion_tokens


def test_the_sdk_gets_n_seeded_choices_logprobs_and_stop(client):
    args = {"model": Settings().gpt_model_id, "messages": MESSAGES, "max_tokens": 16, "temperature": 1.0}
    a = client.chat.completions.create(n=2, seed=5, **args)
    b = client.chat.completions.create(n=2, seed=5, **args)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    with_lp = client.chat.completions.create(logprobs=True, top_logprobs=2, **{**args, "temperature": 0})
    lp = with_lp.choices[0].logprobs
    assert lp is not None and lp.content and all(len(t.top_logprobs) == 2 for t in lp.content)
    assert b"".join(bytes(t.bytes or []) for t in lp.content).decode() == with_lp.choices[0].message.content
    text = with_lp.choices[0].message.content or ""
    if len(text) > 6:  # a stop string cuts the reply where it first appears
        stop = text[3:6]
        cut = client.chat.completions.create(stop=[stop], **{**args, "temperature": 0})
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_a_greedy_chat_is_the_completion_of_its_prompt_cut_where_the_speech_ends(base_url, client):
    prompt = load_tokenizer(Settings().gpt_dir).apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False
    )
    completion = httpx.post(
        f"{base_url}/v1/completions", json={"prompt": prompt, "max_tokens": 48, "temperature": 0}, timeout=60
    ).json()["choices"][0]["text"]
    chat = client.chat.completions.create(
        model=Settings().gpt_model_id, messages=MESSAGES, max_tokens=48, temperature=0
    )
    assert chat.choices[0].message.content == speech(completion)


def test_langchain_chat_openai_invokes_and_streams(base_url):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        base_url=f"{base_url}/v1", api_key="unused", model=Settings().gpt_model_id, max_tokens=16, temperature=0
    )
    reply = llm.invoke("What say'st thou, noble heart?")
    assert isinstance(reply.content, str)
    streamed = "".join(str(chunk.content) for chunk in llm.stream("What say'st thou, noble heart?"))
    assert streamed == reply.content


def test_unknown_paths_and_models_answer_404_in_openai_shape(base_url, client):
    r = httpx.get(f"{base_url}/v1/no-such-thing")
    assert r.status_code == 404 and "/v1/no-such-thing" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
