"""The prefix cache on the shipped GPT: completions, a chat's next turn and echo scoring get the same tokens and
logprobs (within 1e-5) with the cache on and off, and the cached prompts are found."""

from __future__ import annotations

import pytest
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from model.engine import Engine, SamplingParams
from model.gpt import load_gpt, load_tokenizer
from tests.unit.test_prefix_cache import Schedule, same_with_and_without

PASSAGE = (
    "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. Arise, fair sun,"
    " and kill the envious moon, who is already sick and pale with grief that thou her maid art far more fair."
)


@pytest.fixture(scope="module")
def gpt() -> GPT2LMHeadModel:
    return load_gpt()


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return load_tokenizer()


def greedy(n: int, prompt_logprobs: int | None = None) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, logprobs=5, prompt_logprobs=prompt_logprobs)


def reply_of(gpt: GPT2LMHeadModel, prompt: list[int], n: int) -> list[int]:
    engine = Engine(gpt)
    engine.add_request("r", prompt, greedy(n))
    out: list[int] = []
    while engine.has_work():
        out += [e.token_id for e in engine.step() if e.token_id is not None]
    return out


def test_completions_sharing_a_passage(gpt, tok):
    passage = tok.encode(PASSAGE, add_special_tokens=False)
    more = tok.encode(" O, speak again, bright angel!", add_special_tokens=False)
    schedule: Schedule = {0: [("a", passage, greedy(16))], 18: [("b", passage + more, greedy(16))]}
    engine = same_with_and_without(gpt, schedule)
    assert engine.prefix_hits == len(passage)


def test_a_chats_next_turn(gpt, tok):
    def render(messages: list[dict[str, str]]) -> list[int]:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tok.encode(text, add_special_tokens=False))

    messages = [
        {"role": "system", "content": "A street in Venice. Enter OTHELLO and IAGO."},
        {"role": "user", "content": "What news, honest Iago? Speak, and tell me all."},
    ]
    turn1 = render(messages)
    reply = tok.decode(reply_of(gpt, turn1, 12)).split("\n\n")[0]
    turn2 = render([*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": "Away!"}])
    assert turn2[: len(turn1)] == turn1  # the template keeps the earlier turns first
    schedule: Schedule = {0: [("t1", turn1, greedy(12))], 14: [("t2", turn2, greedy(12))]}
    engine = same_with_and_without(gpt, schedule)
    assert engine.prefix_hits >= len(turn1)


def test_echo_scoring_over_a_cached_prefix(gpt, tok):
    passage = tok.encode(PASSAGE, add_special_tokens=False)
    scored = SamplingParams(max_tokens=0, prompt_logprobs=5)
    echoed = greedy(4, prompt_logprobs=3)
    schedule: Schedule = {
        0: [("a", passage[:40], greedy(4))],
        6: [("score", passage, scored), ("echo", passage[:50], echoed)],
        8: [("b", passage + [5], greedy(4))],
    }
    engine = same_with_and_without(gpt, schedule)
    assert engine.prefix_hits == len(passage)  # b finds the scored passage
