"""OpenAI chat completions in one process, against a scripted GPT worker behind the real GPT client: the chat
template, where a reply ends, the chat shapes of answer, stream and logprobs, and what is refused by name."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model.gpt import CHAT_TEMPLATE, GPT_DIR, decode, load_chat_template
from service.schemas.chat import ChatMessage
from service.settings import Settings
from tests.fake_gpt import fake_gpt, says

MESSAGES = [
    {"role": "system", "content": "A street in Venice."},
    {"role": "user", "content": "What say'st thou, noble heart?"},
    {"role": "assistant", "content": "  Nothing, my lord.\n"},
    {
        "role": "user",
        "name": "Roderigo",
        "content": [{"type": "text", "text": "Speak!"}, {"type": "text", "text": "Now."}],
    },
]
# What the HF-side messages are once the server has joined the text parts.
HF_MESSAGES = [*MESSAGES[:3], {"role": "user", "name": "Roderigo", "content": "Speak!\nNow."}]
REPLY = "I will, my lord.\n\nOTHELLO.\nThen speak."


def events(body: str) -> list[str]:
    return [line[6:] for line in body.splitlines() if line.startswith("data: ")]


@pytest.fixture
def folder_with_template(tmp_path: Path) -> Path:
    """A copy of the model folder, less its weights, with the chat template where Hugging Face keeps it."""
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(GPT_DIR / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tmp_path


def test_the_prompt_is_what_hugging_face_renders_from_the_folder(folder_with_template):
    expected = AutoTokenizer.from_pretrained(folder_with_template).apply_chat_template(
        HF_MESSAGES,  # type: ignore[arg-type]  # plain dicts, as users pass them
        add_generation_prompt=True,
        tokenize=False,
    )
    assert isinstance(expected, str)
    assert expected.startswith("[A street in Venice.]\n\nOTHELLO.\nWhat say'st thou, noble heart?\n\nIAGO.\n")
    assert expected.endswith("\n\nRODERIGO.\nSpeak!\nNow.\n\nIAGO.\n")

    async def main() -> str:
        gpt = fake_gpt(says(REPLY), settings=Settings(gpt_dir=folder_with_template))
        assert gpt.routes.chat.render([ChatMessage.model_validate(m) for m in MESSAGES]) == expected
        async with gpt.http() as http:
            r = await http.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert r.status_code == 200, r.text
        (submitted,) = gpt.worker.submitted
        return decode(gpt.routes.served.tok, submitted.prompt_ids)

    assert asyncio.run(main()) == expected  # byte for byte what the worker was asked to continue


def test_the_template_comes_from_the_folder_when_it_has_one(folder_with_template, tmp_path):
    config = json.loads((folder_with_template / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ 'from the config' }}"
    (folder_with_template / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_chat_template(folder_with_template) == "{{ 'from the config' }}"
    (folder_with_template / "chat_template.jinja").write_text("{{ 'x' }}")
    assert load_chat_template(folder_with_template) == "{{ 'x' }}"  # where transformers 5 saves it: looked at first
    assert load_chat_template(tmp_path / "missing") == CHAT_TEMPLATE  # a folder without one: the model's own


def test_the_reply_is_the_speech_cut_where_it_ends_and_the_slot_is_freed():
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        async with gpt.http() as http:
            r = await http.post("/v1/chat/completions", json={"messages": MESSAGES[1:2], "seed": 3, "n": 2})
        body = r.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        for i, choice in enumerate(body["choices"]):
            assert choice["index"] == i
            assert choice["message"] == {"role": "assistant", "content": "I will, my lord.", "refusal": None}
            assert choice["finish_reason"] == "stop"
        assert [s.params.seed for s in gpt.worker.submitted] == [3, 4]
        await asyncio.sleep(0.05)
        assert sorted(gpt.worker.cancelled) == sorted(s.uid for s in gpt.worker.submitted)
        assert gpt.client.open_generations == 0

    asyncio.run(main())


def test_the_stream_opens_with_the_role_then_content_then_finish_usage_and_done():
    async def main() -> None:
        gpt = fake_gpt(says(REPLY), per_step=2)
        body = {"messages": MESSAGES[1:2], "stream": True, "stream_options": {"include_usage": True}}
        async with gpt.http() as http:
            r = await http.post("/v1/chat/completions", json=body)
        data = events(r.text)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
        finish = chunks[-2]["choices"][0]
        assert finish["finish_reason"] == "stop" and finish["delta"] == {}  # unset fields left out, never null
        assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-2])
        content = "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:-2])
        assert content == "I will, my lord."

    asyncio.run(main())


def test_chat_logprobs_carry_each_token_its_bytes_and_alternatives():
    async def main() -> None:
        gpt = fake_gpt(says(" naïve"))
        body = {"messages": MESSAGES[1:2], "logprobs": True, "top_logprobs": 2, "max_tokens": 8}
        async with gpt.http() as http:
            r = await http.post("/v1/chat/completions", json=body)
        content = r.json()["choices"][0]["logprobs"]["content"]
        assert b"".join(bytes(t["bytes"]) for t in content).decode() == " naïve"
        assert all(len(t["top_logprobs"]) == 2 and t["logprob"] == -0.5 for t in content)
        assert content[0]["top_logprobs"][1]["token"] == "<|endoftext|>"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),  # OpenAI's default: "auto"
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"top_logprobs": 2}, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0.type",
        ),
        ({"max_completion_tokens": 4000}, "max_tokens"),
    ],
)
def test_what_this_model_cannot_do_is_a_400_naming_it(extra, param):
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        async with gpt.http() as http:
            r = await http.post("/v1/chat/completions", json={"messages": MESSAGES[1:2], **extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
        assert not gpt.worker.submitted  # nothing was queued

    asyncio.run(main())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x", "name": ""}]}, "messages.0.name"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 9, "logprobs": True}, "top_logprobs"),
    ],
)
def test_bad_values_are_a_422_naming_the_field(body, param):
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        async with gpt.http() as http:
            r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 422 and r.json()["error"]["param"] == param

    asyncio.run(main())


def test_model_cards_and_unknown_paths_answer_in_openai_shape():
    async def main() -> None:
        gpt = fake_gpt(says(REPLY))
        model_id = Settings().gpt_model_id
        async with gpt.http() as http:
            card = await http.get(f"/v1/models/{model_id}")
            missing = await http.get("/v1/models/gpt-17")
            unknown = await http.post("/v1/audio/speech", json={})
        assert card.status_code == 200 and card.json()["id"] == model_id and card.json()["object"] == "model"
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        assert unknown.status_code == 404
        assert "/v1/audio/speech" in unknown.json()["error"]["message"]

    asyncio.run(main())
