"""The prefix cache on tiny random GPT-2 models: hits where a prompt repeats cached tokens, and the same tokens and
logprobs as with the cache off under batching, cancel, reset, seeds, penalties and scoring."""

import pytest
import torch

from model.engine import Engine, SamplingParams, TokenEvent
from model.prefix_cache import BLOCK, PrefixCache
from tests.unit.test_engine import CTX, greedy, tiny_gpt, tokens

P = [(7 * i + 3) % 97 for i in range(40)]  # a 40-token prompt: two whole blocks and a part
Q = [(11 * i + 5) % 97 for i in range(36)]

Schedule = dict[int, list[tuple[str, list[int], SamplingParams] | str]]


@pytest.fixture(scope="module")
def model():
    return tiny_gpt()


def run(engine: Engine, schedule: Schedule) -> dict[str, list[TokenEvent]]:
    """Step until idle, adding `schedule[step]` before that step (a bare string cancels that request id)."""
    events: dict[str, list[TokenEvent]] = {}
    for step in range(500):
        for item in schedule.get(step, []):
            if isinstance(item, str):
                engine.cancel(item)
            else:
                engine.add_request(*item)
        if not engine.has_work() and step > max(schedule, default=-1):
            return events
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
    raise AssertionError("engine did not finish")


def same_with_and_without(model, schedule: Schedule, rows: int = 8, **kw: int) -> Engine:
    """Run `schedule` with the cache on and off: the same tokens, and logprobs within 1e-5; the cached engine."""
    cached = Engine(model, prefix_cache_rows=rows, **kw)
    on, off = run(cached, schedule), run(Engine(model, **kw), schedule)
    assert on.keys() == off.keys()
    for rid in off:
        assert tokens(on[rid]) == tokens(off[rid]), rid
        assert [e.finish_reason for e in on[rid]] == [e.finish_reason for e in off[rid]], rid
        for a, b in zip(on[rid], off[rid], strict=True):
            assert (a.logprob is None) == (b.logprob is None)
            if a.logprob is not None and b.logprob is not None:
                assert abs(a.logprob - b.logprob) < 1e-5, rid
                assert [t for t, _ in a.top_logprobs or []] == [t for t, _ in b.top_logprobs or []]
            for x, y in zip(a.prompt_logprobs or [], b.prompt_logprobs or [], strict=True):
                assert abs(x[0] - y[0]) < 1e-5 and [t for t, _ in x[1]] == [t for t, _ in y[1]], rid
            assert (a.prompt_logprobs is None) == (b.prompt_logprobs is None)
    return cached


def first_reply(model, prompt: list[int], n: int) -> list[int]:
    return tokens(run(Engine(model), {0: [("a", prompt, greedy(n))]})["a"])


def test_the_next_turn_reuses_the_conversation_so_far(model):
    reply = first_reply(model, P, 6)
    turn2 = P + reply + Q[:6]
    schedule: Schedule = {0: [("t1", P, greedy(6, logprobs=5))], 8: [("t2", turn2, greedy(6, logprobs=5))]}
    engine = same_with_and_without(model, schedule)
    # Turn 2 finds turn 1's prompt and every reply token but the last (drawn, never fed back).
    assert engine.prefix_hits == len(P) + len(reply) - 1
    assert engine.prefix_queries == len(P) + len(turn2)


def test_hits_while_others_decode_and_join_in_one_prefill(model):
    # Requests with different cached lengths, one with none, prefilled together beside running sequences; one of
    # them finds the prompt of a sequence still running.
    long_run = greedy(20)
    schedule: Schedule = {
        0: [("a", P, long_run), ("b", Q, greedy(5))],
        8: [("c", P[:33] + Q[:7], greedy(12, logprobs=2)), ("d", Q + P[:5], greedy(9)), ("e", [1, 2, 3], greedy(9)),
            ("f", P + Q[:3], greedy(6))],
    }  # fmt: skip
    engine = same_with_and_without(model, schedule, max_batch_size=6)
    assert engine.prefix_hits == 33 + len(Q) + len(P)


def test_padding_past_the_context_end(model):
    # A long cached prefix beside a long uncached prompt: the padding of the first runs past the context.
    prompt = (P + Q)[: CTX - 4]
    schedule: Schedule = {0: [("a", prompt, greedy(2))], 4: [("b", prompt + [9], greedy(3)), ("c", Q, greedy(3))]}
    engine = same_with_and_without(model, schedule)
    assert engine.prefix_hits == len(prompt)


def test_seeds_and_penalties_count_from_the_whole_prompt(model):
    sampled = SamplingParams(
        max_tokens=12, temperature=0.9, top_k=20, seed=5, repetition_penalty=1.5, frequency_penalty=0.7,
        presence_penalty=0.4, logprobs=3,
    )  # fmt: skip
    schedule: Schedule = {0: [("a", P, greedy(4))], 6: [("b", P + Q[:4], sampled), ("c", P[:20], sampled)]}
    engine = same_with_and_without(model, schedule)
    assert engine.prefix_hits == len(P) + 20 - 1


def test_scoring_recomputes_its_prompt_and_fills_the_cache(model):
    score = SamplingParams(max_tokens=0, prompt_logprobs=5)
    schedule: Schedule = {
        0: [("a", P, greedy(3))],
        4: [("score", P + Q[:5], score), ("echo", P + Q[:9], greedy(3, prompt_logprobs=2))],
        7: [("b", P + Q[:5] + [4], greedy(4))],
    }
    engine = same_with_and_without(model, schedule)
    # Scored prompts are neither looked up nor counted; the later request finds the scored prompt's tokens.
    assert engine.prefix_hits == len(P) + 5
    assert engine.prefix_queries == len(P) + len(P) + 6


def test_a_cancelled_sequence_is_kept_and_reset_forgets_everything(model):
    schedule: Schedule = {0: [("a", P, greedy(20))], 5: ["a"], 7: [("b", P + [1, 2], greedy(5))]}
    engine = same_with_and_without(model, schedule)
    assert engine.prefix_hits == len(P)
    engine.reset()
    assert tokens(run(engine, {0: [("c", P + [1, 2], greedy(5))]})["c"]) == first_reply(model, P + [1, 2], 5)
    assert engine.prefix_hits == len(P)  # nothing found after the reset


def test_rows_are_bounded_and_evicted_least_recently_used_first():
    cache = PrefixCache(2, (1, 1, CTX, 2), torch.float32, torch.device("cpu"))
    kv = torch.arange(2 * CTX * 2, dtype=torch.float32).view(1, 2, 1, CTX, 2)
    a, b, c = [P[:20], Q[:20], [5] * 20]
    cache.store(a, kv)
    cache.store(b, kv)
    assert cache.match(a) == (0, 20)  # a is now the most recently used: b goes first
    cache.store(c, kv)
    assert cache.used == 2 and cache.match(b)[1] == 0 and cache.match(c)[1] == 20
    # A prompt that extends an entry takes its row over; one shorter than a block is not kept.
    cache.store(a + [1] * 30, kv)
    assert cache.used == 2 and cache.match(a + [1] * 40) == (0, 50) and cache.match(a[:BLOCK])[1] == BLOCK
    cache.store([3] * (BLOCK - 1), kv)
    assert cache.match([3] * (BLOCK - 1))[1] == 0
    out = torch.zeros(1, 2, 1, CTX, 2)
    cache.load(0, 50, out)
    assert torch.equal(out[..., :50, :], kv[..., :50, :]) and not out[..., 50:, :].any()
