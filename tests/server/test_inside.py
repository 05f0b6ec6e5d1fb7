"""Inside the models: attention against transformers' own, the embedding plane, the pixel activations, and the
routes' checks in-process (the worker run directly behind a fake of LitServe's request handler)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from model.attention import look_inside, right_pad
from model.embedding_map import Plane, find
from model.gpt import GPT_DIR, encode, gpt_config, load_gpt, load_tokenizer
from model.pixels import load_pixels
from model.two_meanings import measure
from service.api.errors import install_error_handlers
from service.api.gpt.served import ServedGPT
from service.api.introspection import IntrospectionRoutes, pixel_network, register_introspection_routes
from service.schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from service.schemas.introspection import MAX_INSIDE_TOKENS, EmbeddingMapRequest, PixelNetwork
from service.settings import Settings
from service.transport.channel import ChannelAddress
from service.transport.gpt_client import GPTClient
from service.transport.messages import AttentionJob, MapJob
from service.workers.batched import BatchChannel
from service.workers.batcher import BatchLimits
from service.workers.classify import ClassifierWorker, PixelInput
from service.workers.embeddings import EmbeddingsWorker
from service.workers.introspection import GPTIntrospection
from tests.helpers import metric_value

PROMPTS = ["To be, or not to be, that is the question", "ROMEO.\nBut soft, what light", "O"]


@pytest.fixture(scope="module")
def gpt() -> GPT2LMHeadModel:
    return load_gpt()


@pytest.fixture(scope="module")
def eager() -> GPT2LMHeadModel:
    model = AutoModelForCausalLM.from_pretrained(GPT_DIR, local_files_only=True, attn_implementation="eager")
    assert isinstance(model, GPT2LMHeadModel)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def inside(gpt, tok) -> GPTIntrospection:
    return GPTIntrospection(gpt, tok, "tinyserve-gpt")


def reference(model: GPT2LMHeadModel, ids: list[int]) -> torch.Tensor:
    """transformers' own attention weights: [layer, head, query, key]."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    return torch.stack([a[0] for a in out.attentions])


# ---- attention ------------------------------------------------------------------------------------------------


def test_attention_equals_transformers_on_the_trained_gpt(gpt, eager, tok):
    prompts = [encode(tok, p) for p in PROMPTS]
    got = look_inside(gpt, right_pad(prompts, 0)).attentions  # one right-padded batch of three lengths
    for b, ids in enumerate(prompts):
        n = len(ids)
        mine = got[:, b, :, :n, :n]
        assert torch.allclose(mine, reference(eager, ids), atol=1e-4, rtol=0)
        assert torch.allclose(mine.sum(-1), torch.ones_like(mine.sum(-1)), atol=1e-5)
        assert torch.count_nonzero(mine.triu(diagonal=1)) == 0  # causal: nothing after the query


def test_attention_follows_the_config_on_a_random_gpt():
    """A random model of another shape, with GPT-2's optional per-layer scaling on: still transformers' weights."""
    torch.manual_seed(0)
    config = gpt_config(vocab_size=64, n_layer=3, n_head=2, n_embd=16, n_positions=32)
    config.scale_attn_by_inverse_layer_idx = True
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, 64, (20,)).tolist()
    got = look_inside(model, torch.tensor([ids]))
    assert got.attentions.shape == (3, 1, 2, 20, 20) and got.states.shape == (4, 1, 20, 16)
    assert torch.allclose(got.attentions[:, 0], reference(model, ids), atol=1e-5)


def test_attention_job_is_rounded_causal_and_selects_layers_and_heads(inside, eager, tok, gpt):
    ids = encode(tok, PROMPTS[0])
    n_layer, n_head = gpt.config.n_layer, gpt.config.n_head
    every = AttentionJob(ids, list(range(n_layer)), list(range(n_head)))
    full, part = inside.run([every, AttentionJob(ids[:5], [n_layer - 1, 0], [n_head - 1])])
    ref = reference(eager, ids)
    assert full.tokens == [tok.decode([i]) for i in ids] and full.token_ids == ids
    assert len(full.attentions) == n_layer and all(len(heads) == n_head for heads in full.attentions)
    for layer, heads in enumerate(full.attentions):
        for head, rows in enumerate(heads):
            assert [len(r) for r in rows] == list(range(1, len(ids) + 1))  # row q: keys 0..q
            for q, row in enumerate(rows):
                assert sum(row) == pytest.approx(1.0, abs=len(row) * 5e-5)
                assert row == pytest.approx(ref[layer, head, q, : q + 1].tolist(), abs=1e-4)
                assert all(round(w, 4) == w for w in row)
    assert part.layers == [n_layer - 1, 0] and part.heads == [n_head - 1]
    assert part.attentions[0][0][4] == pytest.approx(ref[n_layer - 1, n_head - 1, 4, :5].tolist(), abs=1e-4)
    assert part.attentions[1][0][2] == pytest.approx(ref[0, n_head - 1, 2, :3].tolist(), abs=1e-4)


# ---- the embedding plane --------------------------------------------------------------------------------------


def map_job(tok, words: list[str], context: str | None = None, analogy: list[str] | None = None) -> MapJob:
    request = EmbeddingMapRequest(words=words, context=context, analogy=analogy, neighbours=5)
    word = lambda w: encode(tok, " " + w)  # noqa: E731
    return MapJob(
        request,
        [word(w) for w in words],
        encode(tok, context) if context else None,
        [word(w) for w in analogy] if analogy else None,
    )


def test_plane_is_fixed_for_the_model(gpt, tok, inside):
    refit = Plane.fit(gpt.transformer.wte.weight, inside.texts)
    assert torch.allclose(refit.axes, inside.plane.axes) and torch.equal(refit.words, inside.plane.words)
    # A word sits at the same place whatever is asked with it, call after call.
    alone = inside.run([map_job(tok, ["king"])])[0]
    together = inside.run([map_job(tok, ["love", "king", "night"], context="The king is dead")])[0]
    again = inside.run([map_job(tok, ["king"])])[0]
    assert alone.words[0].point == together.words[1].point == again.words[0].point
    assert alone.words[0].neighbours == together.words[1].neighbours
    assert 0 < alone.explained_variance[1] <= alone.explained_variance[0] < 1


def test_neighbours_are_other_whole_words_by_cosine(inside, tok):
    words = inside.run([map_job(tok, ["king", "bank"])])[0].words
    for w in words:
        cosines = [n.cosine for n in w.neighbours]
        assert len(cosines) == 5 and cosines == sorted(cosines, reverse=True)
        assert all(n.word.startswith(" ") and n.word[1:].replace("'", "").isalpha() for n in w.neighbours)
        assert all(n.word.strip() != w.word for n in w.neighbours)
        first = inside.plane.unit[encode(tok, w.neighbours[0].word)[0]]
        assert float(first @ inside.plane.word_vector(encode(tok, " " + w.word))) == pytest.approx(cosines[0], abs=1e-4)
    assert words[1].tokens == [tok.decode([i]) for i in encode(tok, " bank")]


def test_context_paths_start_at_the_word_and_go_through_every_layer(inside, tok, gpt):
    answer = inside.run([map_job(tok, ["bear", "king"], context="Exit, pursued by a bear; the king is a bear")])[0]
    assert answer.context is not None
    ids = encode(tok, "Exit, pursued by a bear; the king is a bear")
    assert answer.context.tokens == [tok.decode([i]) for i in ids]
    positions = [o.position for o in answer.context.occurrences]
    expected = sorted(find(ids, encode(tok, " bear")) + find(ids, encode(tok, " king")))
    assert positions == expected and len(positions) == 3
    bear = next(w for w in answer.words if w.word == "bear")
    for occurrence in answer.context.occurrences:
        assert [p.layer for p in occurrence.path] == list(range(gpt.config.n_layer + 1))
        if occurrence.word == "bear":
            assert occurrence.path[0].point == bear.point  # layer 0: the word's own embedding
    # The same word in two places of the sentence is read differently after the first layer.
    first, second = (o for o in answer.context.occurrences if o.word == "bear")
    assert first.path[-1].point != second.path[-1].point


def test_analogy_leaves_out_its_words(inside, tok):
    analogy = inside.run([map_job(tok, ["king"], analogy=["queen", "king", "man"])])[0].analogy
    assert analogy is not None and analogy.expression == "queen - king + man"
    assert {n.word.strip() for n in analogy.nearest}.isdisjoint({"queen", "king", "man"})
    assert [n.cosine for n in analogy.nearest] == sorted((n.cosine for n in analogy.nearest), reverse=True)


def test_two_meanings_measurement_ranks_the_candidates():
    pairs = measure()
    assert len(pairs) >= 10 and pairs[0].single_token
    ranked = [p.prediction_js_bits for p in pairs if p.single_token]
    assert ranked == sorted(ranked, reverse=True)
    assert all(0 <= p.prediction_js_bits <= 1 and 0 <= p.state_distance <= 2 for p in pairs)
    assert all(0 < r.cue_attention < 1 for p in pairs for r in p.readings)


# ---- the pixel network ----------------------------------------------------------------------------------------


def plain_forward(network: PixelNetwork, pixels: list[float]) -> list[list[float]]:
    """The network by hand from GET /v1/classify/network's numbers: each layer's sums, squashed."""
    squash = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "softmax": lambda x: x}
    values = [torch.tensor(pixels, dtype=torch.float64)]
    for layer, w, b in zip(network.layers[1:], network.weights, network.biases, strict=True):
        sums = torch.tensor(w, dtype=torch.float64) @ values[-1] + torch.tensor(b, dtype=torch.float64)
        values.append(squash[layer.activation](sums))
    return [v.tolist() for v in values]


@pytest.fixture(scope="module")
def worker_checks() -> dict[str, Any]:
    """The classify and embeddings workers run directly, as LitServe would in their processes."""
    pixels: list[list[float]] = [[-1, 1, -1, 1, 1, 1, -1, 1, -1], [0.5, -0.2, 0, 1, -1, 0.3, 0.9, -0.7, 0.1]]
    threads = torch.get_num_threads()  # each worker's setup sets its process's; the tests after keep theirs
    classify = ClassifierWorker(Settings().pixels_dir, BatchChannel(ChannelAddress("unused"), BatchLimits(32)))
    classify.setup("cpu")
    outputs = classify.predict([PixelInput(p, True) for p in pixels] + [PixelInput(pixels[0], False)])
    embeddings = EmbeddingsWorker(Settings(), BatchChannel(ChannelAddress("unused"), BatchLimits(8)))
    embeddings.setup("cpu")
    torch.set_num_threads(threads)
    texts = embeddings.decode_request(EmbeddingRequest(input=["to be", "or not to be"]))
    job = AttentionJob(encode(embeddings.tok, "O Romeo"), [0], [0])
    embedded, answer = embeddings.predict([texts, job])
    vectors = embeddings.encode_response(embedded)
    explained = []
    for o in outputs[:-1]:
        assert o.activations is not None
        explained.append([o.probabilities, o.activations.model_dump()])
    return {
        "pixels": pixels,
        "explained": explained,
        "plain": [outputs[-1].probabilities, outputs[-1].activations],
        "plain_body": classify.encode_response(outputs[-1]).model_dump(),
        "answer_passes_through": embeddings.encode_response(answer) is answer,
        "attention": answer.attentions,
        "is_embedding_response": isinstance(vectors, EmbeddingResponse),
        "mixed": embedded,
        "alone": embeddings.predict([texts])[0],
    }


def test_classify_explain_equals_a_plain_forward(worker_checks):
    settings = Settings()
    network = pixel_network(settings.pixels_dir, "tinyserve-pixels")
    assert [(layer.name, layer.size) for layer in network.layers] == [
        ("input", 9),
        ("hidden1", 16),
        ("hidden2", 16),
        ("output", 4),
    ]
    assert all(abs(v) <= 1 for matrix in network.weights for row in matrix for v in row)
    pixels = worker_checks["pixels"]
    for p, (probabilities, activations) in zip(pixels, worker_checks["explained"], strict=True):
        by_hand = plain_forward(network, p)
        got = [activations["input"], activations["hidden1"], activations["hidden2"], activations["output"]]
        for mine, ref in zip(got, by_hand, strict=True):
            assert mine == pytest.approx(ref, abs=1e-5)
        assert probabilities == pytest.approx(torch.softmax(torch.tensor(by_hand[-1]), 0).tolist(), abs=1e-6)
        assert all(-1 < v < 1 for v in activations["hidden1"]) and all(0 < v < 1 for v in activations["hidden2"])
    # In the same batch, a request that did not ask gets no activations, and its body is what it always was.
    plain, activations = worker_checks["plain"]
    assert activations is None and "activations" not in worker_checks["plain_body"]
    direct = load_pixels(settings.pixels_dir).predict(torch.tensor([pixels[0]], dtype=torch.float32))[0].tolist()
    assert plain == pytest.approx(direct, abs=1e-6)


def test_the_embeddings_worker_answers_texts_and_jobs_in_one_batch(worker_checks):
    assert worker_checks["answer_passes_through"] and worker_checks["attention"][0][0][0] == [1.0]
    assert worker_checks["is_embedding_response"]
    (mixed, tokens, fmt), (alone, alone_tokens, _) = worker_checks["mixed"], worker_checks["alone"]
    assert tokens == alone_tokens and len(mixed) == 2 and fmt == "float"
    for mine, ref in zip(mixed, alone, strict=True):  # the same vectors with or without the job beside them
        assert mine == pytest.approx(ref, abs=1e-5)


# ---- the routes, in-process -----------------------------------------------------------------------------------


class WorkerBehindAFake:
    """Stands in for the embeddings' BatchClient: runs each job on the worker at once."""

    def __init__(self, inside: GPTIntrospection) -> None:
        self.inside = inside
        self.jobs: list[Any] = []

    async def call(self, payload: Any) -> Any:
        self.jobs.append(payload)
        await asyncio.sleep(0)
        return self.inside.run([payload])[0].model_dump_json().encode()


@pytest.fixture(scope="module")
def client(inside) -> tuple[TestClient, WorkerBehindAFake]:
    settings = Settings()
    fake = WorkerBehindAFake(inside)
    app = FastAPI()
    install_error_handlers(app)
    routes = IntrospectionRoutes(ServedGPT.load(settings, GPTClient(ChannelAddress("/nonexistent"))), fake)
    register_introspection_routes(app, routes, pixel_network(settings.pixels_dir, "tinyserve-pixels"))
    return TestClient(app), fake


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "the king " * MAX_INSIDE_TOKENS}, 400, "prompt"),
        ({"prompt": "O Romeo", "layers": [99]}, 400, "layers"),
        ({"prompt": "O Romeo", "heads": [0, 99]}, 400, "heads"),
        ({"prompt": "O Romeo", "layers": [-1]}, 422, "layers.0"),
        ({"prompt": "O Romeo", "layers": []}, 422, "layers"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "O Romeo", "model": "gpt-4"}, 404, "model"),
        ({"prompt": "O Romeo", "temperature": 1}, 422, "temperature"),  # not ignored: refused by name
    ],
)
def test_attention_refuses_bad_requests_naming_the_field(client, body, status, param):
    test_client, fake = client
    before = len(fake.jobs)
    response = test_client.post("/v1/attention", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert len(fake.jobs) == before  # nothing reached the worker


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"words": []}, "words"),
        ({"words": ["king"] * 33}, "words"),
        ({"words": [" "]}, "words.0"),
        ({"words": ["king"], "analogy": ["a", "b"]}, "analogy"),
        ({"words": ["king"], "neighbours": 99}, "neighbours"),
        ({"words": ["king"], "context": "the king " * MAX_INSIDE_TOKENS}, "context"),
    ],
)
def test_embedding_map_refuses_bad_requests_naming_the_field(client, body, param):
    response = client[0].post("/v1/embeddings/map", json=body)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["param"] == param


def test_routes_answer_from_the_worker(client, tok, gpt):
    test_client, fake = client
    attention = test_client.post("/v1/attention", json={"prompt": "O Romeo, Romeo", "layers": [0]}).json()
    assert fake.jobs[-1] == AttentionJob(encode(tok, "O Romeo, Romeo"), [0], list(range(gpt.config.n_head)))
    assert attention["layers"] == [0] and len(attention["attentions"][0]) == gpt.config.n_head
    plane = test_client.post("/v1/embeddings/map", json={"words": ["king", "queen"], "analogy": ["a", "b", "c"]})
    assert plane.status_code == 200 and [w["word"] for w in plane.json()["words"]] == ["king", "queen"]
    network = test_client.get("/v1/classify/network").json()
    assert network["symbols"] == ["plus", "cross", "ring", "dot"] and len(network["weights"]) == 3


# ---- the real server ------------------------------------------------------------------------------------------


def test_server_answers_inside_endpoints_from_the_trained_models(base_url, eager, tok):
    prompt = "I cannot bear it, my lord"
    before = metric_value(base_url, "tinyserve_inside_seconds_count", {"kind": "attention"})
    answer = httpx.post(f"{base_url}/v1/attention", json={"prompt": prompt}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    ids = encode(tok, prompt)
    assert body["token_ids"] == ids
    ref = reference(eager, ids)
    got = [[[row + [0.0] * (len(ids) - len(row)) for row in rows] for rows in heads] for heads in body["attentions"]]
    assert torch.allclose(torch.tensor(got), ref, atol=1e-4, rtol=0)
    assert metric_value(base_url, "tinyserve_inside_seconds_count", {"kind": "attention"}) >= before + 1
    assert metric_value(base_url, "tinyserve_http_requests_total", {"path": "/v1/attention", "status": "200"}) >= 1

    request = {"words": ["king", "bear"], "context": "Exit, pursued by a bear", "analogy": ["queen", "king", "man"]}
    first = httpx.post(f"{base_url}/v1/embeddings/map", json=request, timeout=60).json()
    second = httpx.post(f"{base_url}/v1/embeddings/map", json={"words": ["bear"]}, timeout=60).json()
    assert first["words"][1] == second["words"][0]  # the projection is the same between calls
    assert len(first["context"]["occurrences"]) == 1

    explained = httpx.post(f"{base_url}/v1/classify", json={"pixels": [0] * 9, "explain": True}, timeout=60).json()
    network = httpx.get(f"{base_url}/v1/classify/network", timeout=60).json()
    layers = plain_forward(PixelNetwork.model_validate(network), [0.0] * 9)
    assert explained["activations"]["hidden2"] == pytest.approx(layers[2], abs=1e-5)
