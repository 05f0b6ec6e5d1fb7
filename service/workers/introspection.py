"""The worker side of /v1/attention and /v1/embeddings/map, run by the embeddings worker on its copy of the GPT.

That worker is not the decoding engine, so a user looking inside the model does not take a decode step from anyone's
stream. The API server has already tokenized and checked each request (api/introspection.py) and sends a job; requests
of a kind that arrive together run as one right-padded forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

from model.attention import look_inside, right_pad
from model.embedding_map import Neighbour, Plane, find
from model.gpt import decode, eot_id
from service.schemas.introspection import (
    Analogy,
    AttentionResponse,
    ContextPaths,
    EmbeddingMapResponse,
    LayerPoint,
    Near,
    Occurrence,
    WordPoint,
)
from service.transport.messages import AttentionJob, IntrospectionJob, MapJob

NEAREST_PER_LAYER = 5  # vocabulary words given at each point of a contextual path


IntrospectionResponse = AttentionResponse | EmbeddingMapResponse


def rounded(x: torch.Tensor) -> list[float]:
    # Through float64 so that 0.1234 is written as 0.1234, not as float32's 0.12340000271797180.
    return x.double().round(decimals=4).tolist()  # type: ignore[no-any-return]


Observer = Callable[[str, float], None]  # (kind, seconds) of each batched pass


class GPTIntrospection:
    """`observe` gets the seconds of each batched pass, by kind (the worker counts them in /metrics; passed in, so
    that this module imports no metrics and runs in any process)."""

    def __init__(
        self, model: GPT2LMHeadModel, tok: PreTrainedTokenizerBase, model_id: str, observe: Observer | None = None
    ) -> None:
        self.observe = observe or (lambda kind, seconds: None)
        self.model = model
        self.model_id = model_id
        self.device = next(model.parameters()).device
        self.pad = eot_id(tok)
        vocab = int(model.config.vocab_size)
        self.texts = [decode(tok, [i]) for i in range(vocab)]
        self.plane = Plane.fit(model.transformer.wte.weight, self.texts)
        centred = self.plane.unit - self.plane.mean
        total = float((centred**2).sum())
        self.explained = [float(((centred @ axis) ** 2).sum()) / total for axis in self.plane.axes]

    def run(self, jobs: list[IntrospectionJob]) -> list[IntrospectionResponse]:
        """Answers in the jobs' order; each kind runs as one batch."""
        answers: dict[int, IntrospectionResponse] = {}
        attention = [(i, j) for i, j in enumerate(jobs) if isinstance(j, AttentionJob)]
        maps = [(i, j) for i, j in enumerate(jobs) if isinstance(j, MapJob)]
        if attention:
            answers.update(zip([i for i, _ in attention], self.attention([j for _, j in attention]), strict=True))
        if maps:
            answers.update(zip([i for i, _ in maps], self.embedding_map([j for _, j in maps]), strict=True))
        return [answers[i] for i in range(len(jobs))]

    def _forward(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        inside = look_inside(self.model, right_pad(prompts, self.pad).to(self.device))
        return inside.attentions.cpu(), inside.states.cpu()

    def attention(self, jobs: list[AttentionJob]) -> list[AttentionResponse]:
        start = time.perf_counter()
        attentions, _ = self._forward([j.ids for j in jobs])  # [layer, batch, head, query, key]
        out = []
        for b, job in enumerate(jobs):
            n = len(job.ids)
            maps = attentions[job.layers][:, b][:, job.heads, :n, :n]
            out.append(
                AttentionResponse(
                    model=self.model_id,
                    token_ids=job.ids,
                    tokens=[self.texts[i] for i in job.ids],
                    layers=job.layers,
                    heads=job.heads,
                    # Causal rows: row q keeps keys 0..q, the rest is zero by construction.
                    attentions=[[[rounded(m[q, : q + 1]) for q in range(n)] for m in head] for head in maps],
                )
            )
        self.observe("attention", time.perf_counter() - start)
        return out

    def _near(self, neighbours: list[Neighbour]) -> list[Near]:
        if not neighbours:
            return []
        points = self.plane.project(self.plane.unit[[n.token_id for n in neighbours]])
        return [
            Near(word=self.texts[n.token_id], cosine=round(n.cosine, 4), point=rounded(p))
            for n, p in zip(neighbours, points, strict=True)
        ]

    def embedding_map(self, jobs: list[MapJob]) -> list[EmbeddingMapResponse]:
        start = time.perf_counter()
        contexts = [j.context_ids for j in jobs if j.context_ids]
        states = self._forward(contexts)[1] if contexts else None  # [layer + 1, batch, position, width]
        out, row = [], 0
        for job in jobs:
            paths = None
            if job.context_ids and states is not None:
                paths = self._paths(job, states[:, row])
                row += 1
            out.append(
                EmbeddingMapResponse(
                    model=self.model_id,
                    explained_variance=[round(v, 4) for v in self.explained],
                    words=self._words(job),
                    context=paths,
                    analogy=self._analogy(job),
                )
            )
        self.observe("embedding_map", time.perf_counter() - start)
        return out

    def _words(self, job: MapJob) -> list[WordPoint]:
        out = []
        for word, ids in zip(job.request.words, job.word_ids, strict=True):
            vector = self.plane.word_vector(ids)
            out.append(
                WordPoint(
                    word=word,
                    tokens=[self.texts[i] for i in ids],
                    point=rounded(self.plane.project(vector[None])[0]),
                    neighbours=self._near(self.plane.nearest(vector, job.request.neighbours, exclude=ids)),
                )
            )
        return out

    def _paths(self, job: MapJob, states: torch.Tensor) -> ContextPaths:
        """Each occurrence of a word in the context, its state at every layer (states: [layer + 1, position, width]).

        Layer 0 is the word's input embedding, where the word itself sits on the plane (no position embedding);
        after that, each layer's output, passed through the final layer norm: the space the tied embeddings are
        read in when the model predicts.
        """
        assert job.context_ids is not None
        ln_f = self.model.transformer.ln_f
        occurrences = []
        for word, ids in zip(job.request.words, job.word_ids, strict=True):
            for position in find(job.context_ids, ids):
                vectors = [self.plane.word_vector(ids)]
                with torch.inference_mode():
                    vectors += [ln_f(s.to(self.device)).float().cpu() for s in states[1:, position]]
                points = self.plane.project(torch.stack(vectors))
                path = [
                    LayerPoint(
                        layer=layer,
                        point=rounded(point),
                        nearest=self._near(self.plane.nearest(vector, NEAREST_PER_LAYER)),
                    )
                    for layer, (vector, point) in enumerate(zip(vectors, points, strict=True))
                ]
                occurrences.append(Occurrence(word=word, position=position, path=path))
        occurrences.sort(key=lambda o: o.position)
        return ContextPaths(tokens=[self.texts[i] for i in job.context_ids], occurrences=occurrences)

    def _analogy(self, job: MapJob) -> Analogy | None:
        if job.request.analogy is None or job.analogy_ids is None:
            return None
        a, b, c = job.analogy_ids
        target, nearest = self.plane.analogy(a, b, c, max(job.request.neighbours, 1))
        wa, wb, wc = job.request.analogy
        return Analogy(
            expression=f"{wa} - {wb} + {wc}",
            point=rounded(self.plane.project(target[None])[0]),
            nearest=self._near(nearest),
        )
