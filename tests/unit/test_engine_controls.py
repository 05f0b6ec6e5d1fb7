"""The engine's sampling controls and prompt scoring on a tiny random GPT-2: against `generate` and a plain forward."""

import math

import pytest
import torch
from transformers import GPT2LMHeadModel

from model.engine import AdmissionError, Engine, SamplingParams, TokenEvent
from tests.unit.test_engine import CTX, PROMPTS, greedy, run, tiny_gpt, tokens


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return tiny_gpt()


def generate(model: GPT2LMHeadModel, prompt: list[int], n: int, **kw: object) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, pad_token_id=0, **kw
    )
    return out[0, len(prompt) :].tolist()


Schedule = dict[int, list[tuple[str, list[int], SamplingParams]]]


def crowd(rid: str, prompt: list[int], params: SamplingParams) -> Schedule:
    """`params` beside plain requests that join before and after it and leave early, so its row moves."""
    return {
        0: [("short", PROMPTS[0], greedy(3)), ("plain", PROMPTS[3], SamplingParams(30, top_k=5))],
        1: [(rid, prompt, params), ("bias", PROMPTS[2], greedy(6, logit_bias=((1, 5.0),)))],
        3: [("late", PROMPTS[4], greedy(4, presence_penalty=1.0))],
    }


def test_repetition_penalty_matches_generate_alone_and_in_a_crowd(model):
    prompt = PROMPTS[1]
    # Both end at token 0, the tiny model's end-of-text.
    ref = generate(model, prompt, 20, repetition_penalty=1.8)
    assert ref != generate(model, prompt, 20), "the penalty should change this greedy output"
    params = greedy(20, repetition_penalty=1.8, stop_token_ids=(0,))
    assert tokens(run(Engine(model), {0: [("r", prompt, params)]})["r"]) == ref
    assert tokens(run(Engine(model, max_batch_size=8), crowd("r", prompt, params))["r"]) == ref


def reference_penalised(model, prompt: list[int], n: int, frequency: float, presence: float) -> list[int]:
    """Greedy decoding by plain forwards with OpenAI's formula written out."""
    seq, out = list(prompt), list[int]()
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float()
        token = int((logits - counts * frequency - (counts > 0).float() * presence).argmax())
        seq.append(token)
        out.append(token)
    return out


def test_frequency_and_presence_penalties_match_a_plain_forward(model):
    prompt = PROMPTS[0]
    for frequency, presence in ((2.0, 0.0), (0.0, 2.0), (0.7, -0.5)):
        ref = reference_penalised(model, prompt, 20, frequency, presence)
        params = greedy(20, frequency_penalty=frequency, presence_penalty=presence)
        assert tokens(run(Engine(model, max_batch_size=8), crowd("p", prompt, params))["p"]) == ref
    assert reference_penalised(model, prompt, 20, 2.0, 0.0) != generate(model, prompt, 20)


def test_logit_bias_bans_and_forces_at_temperature_zero(model):
    prompt = PROMPTS[1]
    plain = generate(model, prompt, 8)
    banned = tokens(run(Engine(model), {0: [("b", prompt, greedy(8, logit_bias=((plain[0], -100.0),)))]})["b"])
    assert banned[0] != plain[0] and plain[0] not in banned
    forced = run(Engine(model), {0: [("f", prompt, greedy(8, logit_bias=((42, 100.0),), logprobs=1))]})["f"]
    assert tokens(forced) == [42] * 8
    # Logprobs stay the model's: a forced token is not a certain one.
    assert all(e.logprob is not None and e.logprob < -1e-3 for e in forced)
    sampled = run(Engine(model), {0: [("s", prompt, SamplingParams(8, seed=1, logit_bias=((42, 100.0),)))]})["s"]
    assert tokens(sampled) == [42] * 8


def test_min_tokens_matches_generate(model):
    prompt = PROMPTS[1]
    plain = generate(model, prompt, 12)
    stop = plain[1]  # greedy would stop on its second token
    ref = generate(model, prompt, 12, min_new_tokens=6, eos_token_id=stop)
    evs = run(Engine(model), {0: [("m", prompt, greedy(12, stop_token_ids=(stop,), min_tokens=6))]})["m"]
    end = ref.index(stop) if stop in ref else len(ref) - 1
    assert tokens(evs) == ref[: end + 1] and len(tokens(evs)) >= 7
    early = run(Engine(model), {0: [("e", prompt, greedy(12, stop_token_ids=(stop,)))]})["e"]
    assert tokens(early) == plain[:2] and early[-1].finish_reason == "stop"


def test_every_control_on_in_one_batch_keeps_seeded_tokens(model):
    params = SamplingParams(
        20, temperature=0.9, top_k=30, min_p=0.05, seed=5, frequency_penalty=0.5, presence_penalty=0.3,
        repetition_penalty=1.2, logit_bias=((7, 2.0), (8, -100.0)), min_tokens=4, stop_token_ids=(0,),
    )  # fmt: skip
    alone = tokens(run(Engine(model), {0: [("me", PROMPTS[4], params)]})["me"])
    assert tokens(run(Engine(model, max_batch_size=8), crowd("me", PROMPTS[4], params))["me"]) == alone
    assert 8 not in alone


def plain_logprobs(model: GPT2LMHeadModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_prompt_logprobs_match_a_plain_forward(model):
    prompt = PROMPTS[3]
    params = greedy(3, prompt_logprobs=4, logprobs=2)
    events = run(Engine(model), {0: [("s", prompt, params), ("o", PROMPTS[1], greedy(3))]})
    first = events["s"][0]
    assert first.prompt_logprobs is not None and len(first.prompt_logprobs) == len(prompt) - 1
    lp = plain_logprobs(model, prompt)
    for t, (chosen, top) in enumerate(first.prompt_logprobs):
        assert abs(chosen - lp[t, prompt[t + 1]].item()) < 1e-4
        assert [i for i, _ in top] == lp[t].topk(4).indices.tolist()
    assert all(e.prompt_logprobs is None for e in events["s"][1:] + events["o"])


def test_scoring_a_continuation_and_a_passage(model):
    """What an evaluation harness asks: sum of a continuation's logprobs, a passage's total, and greedy-ness."""
    context, continuation = PROMPTS[1], [40, 2, 77, 13]
    text = context + continuation
    evs = run(Engine(model), {0: [("c", text, SamplingParams(0, prompt_logprobs=1))]})["c"]
    assert [(e.token_id, e.finish_reason) for e in evs] == [(None, "length")]
    scored = evs[0].prompt_logprobs
    assert scored is not None
    lp = plain_logprobs(model, text)
    expected = sum(lp[t - 1, text[t]].item() for t in range(len(context), len(text)))
    got = sum(chosen for chosen, _ in scored[len(context) - 1 :])
    assert abs(got - expected) < 1e-4
    assert abs(sum(c for c, _ in scored) - sum(lp[t - 1, text[t]].item() for t in range(1, len(text)))) < 1e-4
    is_greedy = all(top[0][0] == text[t + 1] for t, (_, top) in enumerate(scored) if t + 1 >= len(context))
    assert is_greedy == all(lp[t - 1].argmax().item() == text[t] for t in range(len(context), len(text)))
    own = generate(model, context, 4)  # the model's own greedy continuation is greedy by the score too
    own_scored = run(Engine(model), {0: [("g", context + own, SamplingParams(0, prompt_logprobs=1))]})["g"]
    top1 = [top[0][0] for _, top in own_scored[0].prompt_logprobs or []]
    assert top1[len(context) - 1 :] == own


def test_scoring_a_full_context_prompt_beside_generation(model):
    long = [(7 * i) % 96 + 1 for i in range(CTX)]
    events = run(
        Engine(model, max_batch_size=4),
        {0: [("full", long, SamplingParams(0, prompt_logprobs=0)), ("gen", PROMPTS[0], greedy(5))]},
    )
    (ev,) = events["full"]
    assert ev.prompt_logprobs is not None and len(ev.prompt_logprobs) == CTX - 1
    assert all(top == [] for _, top in ev.prompt_logprobs)
    lp = plain_logprobs(model, long)
    assert abs(sum(c for c, _ in ev.prompt_logprobs) - sum(lp[t - 1, long[t]].item() for t in range(1, CTX))) < 1e-3
    assert tokens(events["gen"]) == generate(model, PROMPTS[0], 5)
    single = run(Engine(model), {0: [("one", [5], SamplingParams(0, prompt_logprobs=3))]})["one"]
    assert single == [TokenEvent("one", None, None, None, "length", [])]


@pytest.mark.parametrize(
    "params",
    [
        greedy(4, frequency_penalty=2.5),
        greedy(4, presence_penalty=-2.1),
        greedy(4, repetition_penalty=0.0),
        greedy(4, repetition_penalty=2.5),
        greedy(4, min_p=1.5),
        greedy(4, min_tokens=5),
        greedy(4, logit_bias=((97, 1.0),)),
        greedy(4, logit_bias=((3, -101.0),)),
        greedy(4, logit_bias=tuple((i % 97, 1.0) for i in range(301))),
        greedy(4, prompt_logprobs=21),
        greedy(0),  # nothing to generate and nothing to score
    ],
)
def test_control_admission_errors(model, params):
    with pytest.raises(AdmissionError):
        Engine(model).add_request("bad", [1, 2], params)


def test_controls_in_bfloat16_give_finite_logprobs():
    model = tiny_gpt().to(torch.bfloat16)  # type: ignore[arg-type]  # transformers types `to` oddly
    params = SamplingParams(6, seed=2, repetition_penalty=1.5, frequency_penalty=1.0, logprobs=1, prompt_logprobs=1)
    evs = run(Engine(model), {0: [("h", PROMPTS[1], params)]})["h"]
    assert len(evs) == 6 and all(e.logprob is not None and math.isfinite(e.logprob) for e in evs)
    assert evs[0].prompt_logprobs is not None and all(math.isfinite(c) for c, _ in evs[0].prompt_logprobs)
