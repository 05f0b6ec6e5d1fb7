"""Sampling controls on fixed logits against Hugging Face's logits processors (OpenAI's formula where it has none)."""

from typing import cast

import pytest
import torch
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model.logits import Controls, TokenCounts
from model.sampling import SamplingParams, SamplingPlan

VOCAB = 50
CPU = torch.device("cpu")
PROMPT = [3, 7, 7, 11]
OUTPUT = [7, 20, 20, 20, 5]  # 7 is in both; 20 three times


@pytest.fixture
def logits() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, VOCAB) * 3


def apply(rows: list[SamplingParams], logits: torch.Tensor, output: list[int] = OUTPUT) -> torch.Tensor:
    """Controls of `rows`, each with PROMPT as its prompt and `output` already generated (counted by `record`)."""
    counts = TokenCounts(len(rows), VOCAB, CPU)
    for row in range(len(rows)):
        counts.start(row, PROMPT)
    for i, token in enumerate(output):
        controls = Controls.of([(p, i) for p in rows], 0, counts, CPU)
        if controls is not None:  # none once a row's only control, min_tokens, is met
            controls.record(torch.full((len(rows),), token))
    controls = Controls.of([(p, len(output)) for p in rows], 0, counts, CPU)
    return logits if controls is None else controls.apply(logits)


def seen_ids() -> torch.LongTensor:
    return cast(torch.LongTensor, torch.tensor([PROMPT + OUTPUT]))


def test_repetition_penalty_matches_hugging_face(logits):
    rows = [SamplingParams(repetition_penalty=p) for p in (1.5, 0.7, 1.0, 2.0)]
    got = apply(rows, logits)
    for row, params in enumerate(rows):
        ref = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(seen_ids(), logits[row : row + 1].clone())
        torch.testing.assert_close(got[row], ref[0])
    assert not torch.equal(got[0], logits[0])


def test_frequency_and_presence_follow_openais_formula(logits):
    rows = [
        SamplingParams(frequency_penalty=0.5),
        SamplingParams(presence_penalty=-1.5),
        SamplingParams(frequency_penalty=2.0, presence_penalty=1.0),
        SamplingParams(),
    ]
    got = apply(rows, logits)
    counts = torch.bincount(torch.tensor(OUTPUT), minlength=VOCAB).float()  # the output only, not the prompt
    for row, p in enumerate(rows):
        ref = logits[row] - counts * p.frequency_penalty - (counts > 0).float() * p.presence_penalty
        torch.testing.assert_close(got[row], ref)


def test_logit_bias_matches_hugging_faces_sequence_bias(logits):
    bias = ((4, -100.0), (9, 100.0), (30, 2.5))
    got = apply([SamplingParams(logit_bias=bias), SamplingParams()], logits[:2])
    ref = SequenceBiasLogitsProcessor([[[t], b] for t, b in bias])(seen_ids(), logits[:1].clone())
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], logits[1])  # a row without controls is left as it was
    assert got[0].argmax().item() == 9


@pytest.mark.parametrize("min_tokens", [3, 5, 6, 8])
def test_min_tokens_matches_hugging_face(logits, min_tokens):
    stops = (5, 12)
    params = SamplingParams(max_tokens=10, min_tokens=min_tokens, stop_token_ids=stops)
    got = apply([params], logits[:1])
    ids = seen_ids()
    ref = MinNewTokensLengthLogitsProcessor(len(PROMPT), min_tokens, list(stops))(ids, logits[:1].clone())
    torch.testing.assert_close(got[0], ref[0])
    assert got[0, 5].isinf() == (len(OUTPUT) < min_tokens)


def test_controls_combine_in_vllms_order(logits):
    # Bias first, then repetition, frequency and presence.
    p = SamplingParams(logit_bias=((20, 3.0),), repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2)
    got = apply([p], logits[:1])[0]
    x = logits[0].clone()
    x[20] += 3.0
    x = RepetitionPenaltyLogitsProcessor(1.3)(seen_ids(), x.unsqueeze(0))[0]
    counts = torch.bincount(torch.tensor(OUTPUT), minlength=VOCAB).float()
    torch.testing.assert_close(got, x - counts * 0.4 - (counts > 0).float() * 0.2)


def test_no_controls_no_object():
    assert Controls.of([(SamplingParams(min_tokens=4), 0)], 0, TokenCounts(1, VOCAB, CPU), CPU) is None  # no stops
    assert not SamplingParams(top_k=5, min_p=0.1, logprobs=2).uses_controls
    met = SamplingParams(min_tokens=1, stop_token_ids=(5,))  # chat's: it masks the first token only
    assert Controls.of([(met, 0)], 0, TokenCounts(1, VOCAB, CPU), CPU) is not None
    assert Controls.of([(met, 1)], 0, TokenCounts(1, VOCAB, CPU), CPU) is None


def hugging_face_warped(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Hugging Face's sampling distribution: temperature, top-k, top-p, min-p, in generate's order."""
    x = TemperatureLogitsWarper(p.temperature)(seen_ids(), logits.unsqueeze(0).clone())
    if p.top_k:
        x = TopKLogitsWarper(p.top_k)(seen_ids(), x)
    if p.top_p < 1:
        x = TopPLogitsWarper(p.top_p)(seen_ids(), x)
    if p.min_p:
        x = MinPLogitsWarper(p.min_p)(seen_ids(), x)
    return x.softmax(-1)[0]


MIN_P = [
    SamplingParams(temperature=1.0, min_p=0.1),
    SamplingParams(temperature=0.6, min_p=0.05),
    SamplingParams(temperature=1.4, min_p=0.3, top_k=8),
    SamplingParams(temperature=1.0, min_p=0.02, top_p=0.9),
]


def test_min_p_matches_hugging_face_in_a_mixed_batch(logits):
    # Greedy, plain sampling and each min-p row share one plan (and so its groups).
    rows = [*MIN_P, SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=5)]
    batch = torch.cat([logits, logits[:2]])
    dist = SamplingPlan([(p, None) for p in rows], VOCAB, CPU).distribution(batch)
    for row, p in enumerate(MIN_P):
        ref = hugging_face_warped(logits[row], p)
        torch.testing.assert_close(dist[row], ref)
        assert 0 < int((ref > 0).sum()) < VOCAB, "min-p should drop some tokens but not all"
    assert dist[4].tolist() == torch.nn.functional.one_hot(logits[0].argmax(), VOCAB).float().tolist()
    torch.testing.assert_close(dist[5], hugging_face_warped(logits[1], rows[5]))


def test_min_p_one_keeps_only_the_top_token(logits):
    p = SamplingParams(temperature=1.0, min_p=1.0)
    plan = SamplingPlan([(p, None)], VOCAB, CPU)
    assert plan.distribution(logits[:1])[0].argmax() == logits[0].argmax()
    assert int((plan.distribution(logits[:1])[0] > 0).sum()) == 1
    draws = {plan.sample(logits[:1], torch.Generator().manual_seed(s)).item() for s in range(20)}
    assert draws == {logits[0].argmax().item()}


def test_sampled_tokens_stay_in_the_min_p_set(logits):
    plan = SamplingPlan([(MIN_P[0], None)] * 4, VOCAB, CPU)
    allowed = plan.distribution(logits) > 0
    rng = torch.Generator().manual_seed(1)
    for _ in range(200):
        tokens = plan.sample(logits, rng)
        assert allowed[torch.arange(4), tokens].all()
