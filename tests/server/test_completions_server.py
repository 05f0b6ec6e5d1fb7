"""The GPT over HTTP on the shared server: OpenAI completions, streaming, validation, tokenize, embeddings, models."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest

from tests.helpers import metric_value, sse_events

PROMPT = "ROMEO.\nWhat light"


def complete(base_url: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", json={"prompt": PROMPT, **body}, timeout=60)


def test_completion_object_usage_and_length_finish(base_url):
    r = complete(base_url, max_tokens=7, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    prompt_tokens = httpx.post(f"{base_url}/v1/tokenize", json={"prompt": PROMPT}).json()["count"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 7
    assert choice["text"]


def test_greedy_is_deterministic_and_streaming_gives_the_same_text(base_url):
    a = complete(base_url, max_tokens=20, temperature=0).json()["choices"][0]["text"]
    b = complete(base_url, max_tokens=20, temperature=0).json()["choices"][0]["text"]
    assert a == b
    with httpx.stream(
        "POST",
        f"{base_url}/v1/completions",
        timeout=60,
        json={"prompt": PROMPT, "max_tokens": 20, "temperature": 0, "stream": True},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == a
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_seeded_sampling_is_reproducible_and_seeds_differ(base_url):
    args = {"max_tokens": 24, "temperature": 1.0, "top_k": 50}
    a = complete(base_url, seed=11, **args).json()["choices"][0]["text"]
    b = complete(base_url, seed=11, **args).json()["choices"][0]["text"]
    c = complete(base_url, seed=12, **args).json()["choices"][0]["text"]
    assert a == b
    assert a != c


def test_stream_arrives_token_by_token_with_usage_chunk(base_url):
    stamps: list[float] = []
    t0 = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{base_url}/v1/completions",
        timeout=60,
        json={
            "prompt": PROMPT,
            "max_tokens": 48,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        events = []
        for e in sse_events(r.iter_lines()):
            stamps.append(time.perf_counter() - t0)
            events.append(e)
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    token_chunks = events[:-2]
    assert len(token_chunks) > 5
    # The first token is out well before the last: the answer is streamed, not buffered.
    assert stamps[0] < 0.5 * stamps[len(token_chunks) - 1]


def test_stop_string_across_tokens_is_not_returned(base_url):
    full = complete(base_url, max_tokens=30, temperature=0).json()["choices"][0]["text"]
    stop = full[5:9]
    assert len(stop) == 4
    cut = full[: full.index(stop)]
    r = complete(base_url, max_tokens=30, temperature=0, stop=[stop, "zzzz-never"])
    choice = r.json()["choices"][0]
    assert choice["text"] == cut
    assert choice["finish_reason"] == "stop"
    # The same through the stream.
    with httpx.stream(
        "POST",
        f"{base_url}/v1/completions",
        timeout=60,
        json={"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stop": stop, "stream": True},
    ) as s:
        chunks = [json.loads(e) for e in sse_events(s.iter_lines()) if e != "[DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_logprobs_top_alternatives(base_url):
    r = complete(base_url, max_tokens=6, temperature=0, logprobs=3)
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert 1 <= len(top) <= 3
        assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-4
        # Greedy: the chosen token is the most likely one.
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)


def test_n_and_prompt_lists_and_echo(base_url):
    r = httpx.post(
        f"{base_url}/v1/completions",
        timeout=60,
        json={"prompt": ["To be", "KING."], "n": 2, "max_tokens": 4, "seed": 3, "echo": True},
    )
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"].startswith("To be") and choices[2]["text"].startswith("KING.")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"logprobs": 9}, "logprobs"),
        ({"n": 100}, "n"),
        ({"prompt": 12}, "prompt"),
        ({"stop": ["a"] * 17}, "stop"),  # more than 16
    ],
)
def test_bad_values_are_4xx_naming_the_parameter(base_url, body, param):
    r = httpx.post(f"{base_url}/v1/completions", json={"prompt": PROMPT, **body}, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"].split(".")[0] == param
    assert err["message"] and err["type"] == "invalid_request_error"


def test_context_overflow_is_400_and_unknown_params_are_ignored(base_url):
    r = complete(base_url, max_tokens=4000)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = complete(base_url, max_tokens=2, frequency_penalty=0.5, best_of=1)
    assert r.status_code == 200
    r = complete(base_url, model="gpt-17", max_tokens=2)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_models_tokenize_detokenize(base_url):
    models = httpx.get(f"{base_url}/v1/models").json()
    ids = [m["id"] for m in models["data"]]
    assert len(ids) == 2 and models["object"] == "list"
    text = "To be, or not to be: naïve 🐈"
    tok = httpx.post(f"{base_url}/v1/tokenize", json={"prompt": text}).json()
    assert tok["count"] == len(tok["tokens"]) == len(tok["token_strs"])
    ascii_tok = httpx.post(f"{base_url}/v1/tokenize", json={"prompt": "To be, or not"}).json()
    assert "".join(ascii_tok["token_strs"]) == "To be, or not"
    assert any(s.startswith(" ") for s in tok["token_strs"])  # sub-words carry their leading space
    back = httpx.post(f"{base_url}/v1/detokenize", json={"tokens": tok["tokens"]}).json()
    assert back["prompt"] == text
    bad = httpx.post(f"{base_url}/v1/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens.0"


def test_embeddings_are_normalised_and_distinguish_texts(base_url):
    r = httpx.post(
        f"{base_url}/v1/embeddings",
        json={"input": ["to be or not to be", "the king is dead", "Exeunt"]},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    vecs = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for v in vecs:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert vecs[0] != vecs[1]
    assert body["usage"]["prompt_tokens"] > 0
    single = httpx.post(f"{base_url}/v1/embeddings", json={"input": "to be or not to be"}).json()
    assert single["data"][0]["embedding"] == pytest.approx(vecs[0], abs=1e-4)


def test_metrics_count_generated_tokens(base_url):
    before = metric_value(base_url, "tinyserve_gpt_generation_tokens_total")
    r = complete(base_url, max_tokens=9, temperature=0)
    used = r.json()["usage"]["completion_tokens"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = metric_value(base_url, "tinyserve_gpt_generation_tokens_total")
        if after - before >= used:
            break
        time.sleep(0.1)
    assert after - before == used


def test_streaming_several_choices_interleaves_them_by_index(base_url):
    body = {"prompt": ["To be", "KING."], "n": 2, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as r:
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts: dict[int, str] = {}
    finished = set()
    for c in chunks:
        (choice,) = c["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finished.add(choice["index"])
    assert finished == {0, 1, 2, 3}
    # Greedy: both choices of a prompt agree, and match the non-streamed answer.
    assert texts[0] == texts[1] and texts[2] == texts[3]
    alone = complete(base_url, prompt="KING.", max_tokens=5, temperature=0).json()["choices"][0]["text"]
    assert texts[2] == alone


def test_scoring_a_continuation_and_a_passage_matches_a_plain_forward(base_url):
    """What an evaluation harness does through the API: echo + logprobs with max_tokens 0, read against the
    shipped model's own forward."""
    import torch
    from transformers import GPT2LMHeadModel

    from model.gpt import GPT_DIR, encode, load_tokenizer

    context, continuation = "ROMEO.\nWhat light through yonder", " window breaks?"
    tok = load_tokenizer()
    ids = encode(tok, context + continuation)
    n_context = len(encode(tok, context))
    assert encode(tok, context) == ids[:n_context]  # the continuation starts on a token boundary
    r = httpx.post(
        f"{base_url}/v1/completions",
        json={"prompt": context + continuation, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == context + continuation and choice["finish_reason"] == "length"
    assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None

    model = GPT2LMHeadModel.from_pretrained(GPT_DIR, local_files_only=True).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = [ref[t - 1, ids[t]].item() for t in range(1, len(ids))]
    assert abs(sum(lp["token_logprobs"][n_context:]) - sum(expected[n_context - 1 :])) < 1e-4
    assert abs(sum(lp["token_logprobs"][1:]) - sum(expected)) < 1e-4
    greedy = [ref[t - 1].argmax().item() == ids[t] for t in range(n_context, len(ids))]
    pairs = zip(lp["top_logprobs"][n_context:], lp["tokens"][n_context:], strict=True)
    assert [max(top, key=top.get) == text for top, text in pairs] == greedy
