"""Grammar-constrained decoding: model/grammar.py's grammars on the engine, with a tiny random GPT-2 over the shipped
tokenizer (its vocabulary, no weights): a random model writes anything, so every valid output is the mask's doing."""

import json
from collections.abc import Sequence

import jsonschema
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model.engine import Engine, SamplingParams, TokenEvent
from model.gpt import decode, encode, eot_id, load_tokenizer
from model.grammar import GrammarError, Grammars, build_grammar

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "mood": {"enum": ["merry", "sad"]},
        "age": {"type": "integer", "minimum": 1, "maximum": 99},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["name", "mood", "age", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def grammars(tok):
    return Grammars(tok, len(tok))


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2, initializer_range=0.5, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def run(
    engine: Engine, requests: Sequence[tuple[str, SamplingParams, str | None]], grammars: Grammars, prompt: list[int]
):
    """Each request to its end; the events by request id."""
    for rid, params, grammar in requests:
        engine.add_request(rid, prompt, params, grammars.row(grammar) if grammar else None)
    events: dict[str, list[TokenEvent]] = {}
    while engine.has_work():
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
    return events


def text(tok, evs: list[TokenEvent]) -> str:
    return decode(tok, [e.token_id for e in evs if e.token_id is not None and e.token_id != eot_id(tok)])


def test_sampled_outputs_follow_the_schema_over_seeds(model, tok, grammars):
    grammar = build_grammar("json", SCHEMA)
    params = [SamplingParams(max_tokens=100, temperature=1.0, seed=seed, stop_token_ids=(0,)) for seed in range(6)]
    evs = run(Engine(model), [(str(i), p, grammar) for i, p in enumerate(params)], grammars, encode(tok, "KING."))
    outputs = [text(tok, evs[str(i)]) for i in range(len(params))]
    for out, i in zip(outputs, range(len(params)), strict=True):
        jsonschema.validate(json.loads(out), SCHEMA)
        assert evs[str(i)][-1].finish_reason == "stop"
    assert len(set(outputs)) > 1  # the seeds drew different documents


def test_choice_regex_and_ebnf(model, tok, grammars):
    kinds = {
        "choice": (build_grammar("choice", ["aye", "nay", "perchance"]), lambda s: s in {"aye", "nay", "perchance"}),
        "regex": (build_grammar("regex", r"[0-9]{3}-[a-z]{2}"), lambda s: len(s) == 6 and s[3] == "-"),
        "ebnf": (build_grammar("grammar", 'root ::= "to " ("be" | "die")'), lambda s: s in {"to be", "to die"}),
    }
    reqs = [(name, SamplingParams(max_tokens=20, temperature=1.0, seed=1), g) for name, (g, _) in kinds.items()]
    evs = run(Engine(model), reqs, grammars, encode(tok, "KING."))
    for name, (_, valid) in kinds.items():
        assert valid(text(tok, evs[name])), (name, text(tok, evs[name]))


def test_unconstrained_rows_beside_constrained_ones_are_unchanged(model, tok, grammars):
    prompt = encode(tok, "KING.")
    plain = SamplingParams(max_tokens=12, temperature=0.0)
    alone = run(Engine(model), [("p", plain, None)], grammars, prompt)["p"]
    json_params = SamplingParams(max_tokens=40, temperature=0.7, seed=2)
    both = run(Engine(model), [("j", json_params, build_grammar("json", SCHEMA)), ("p", plain, None)], grammars, prompt)
    assert [e.token_id for e in both["p"]] == [e.token_id for e in alone]


def test_logprobs_are_the_raw_distribution_and_length_cuts_the_document(model, tok, grammars):
    prompt = encode(tok, "KING.")
    params = SamplingParams(max_tokens=5, temperature=0.0, logprobs=5)
    evs = run(Engine(model), [("x", params, build_grammar("json", SCHEMA))], grammars, prompt)["x"]
    assert evs[-1].finish_reason == "length" and text(tok, evs).startswith('{"name"')  # as far as it got
    seq = list(prompt)
    for ev in evs:
        with torch.no_grad():
            raw = model(torch.tensor([seq])).logits[0, -1].log_softmax(-1)
        assert ev.top_logprobs is not None and ev.token_id is not None and ev.logprob is not None
        assert [t for t, _ in ev.top_logprobs] == raw.topk(5).indices.tolist()  # the model's, unmasked
        assert abs(ev.logprob - raw[ev.token_id].item()) < 1e-4
        seq.append(ev.token_id)


def test_the_same_grammar_compiles_once(tok):
    fresh = Grammars(tok, len(tok))
    grammar = build_grammar("regex", "a+")
    first, second = fresh.row(grammar), fresh.row(grammar)
    assert fresh.compiled == 1 and first is not second
    first.accept(encode(tok, "a")[0])
    assert second.allows(encode(tok, "a")) == [True]


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("json", {"type": "objec"}),
        ("json", {"$ref": "#/nowhere"}),
        ("regex", "a("),
        ("choice", []),
        ("grammar", "root ::= undefined"),
    ],
)
def test_a_grammar_that_cannot_compile_says_why(kind, spec):
    with pytest.raises(GrammarError) as err:
        build_grammar(kind, spec)
    assert str(err.value)


def test_penalties_and_a_bias_toward_a_forbidden_token_keep_the_output_valid(model, tok, grammars):
    forbidden = encode(tok, " the")[0]  # never part of a number
    params = SamplingParams(
        max_tokens=12,
        temperature=1.0,
        seed=5,
        frequency_penalty=2.0,
        repetition_penalty=1.5,
        logit_bias=((forbidden, 100.0),),
        min_p=0.05,
        top_k=20,
        stop_token_ids=(0,),
    )
    evs = run(Engine(model), [("x", params, build_grammar("regex", "[0-9]{2,4}"))], grammars, encode(tok, "KING."))
    out = text(tok, evs["x"])
    assert out.isdigit() and 2 <= len(out) <= 4 and forbidden not in [e.token_id for e in evs["x"]]
