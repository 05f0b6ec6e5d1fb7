"""The embeddings worker process: `/v1/embeddings` (the mean of the GPT's last hidden state over the tokens,
L2-normalised; inputs past the context keep their first tokens) and the introspection jobs, all batched.

It holds a copy of the GPT that is not the decoding engine: looking inside the model takes no decode step from anyone.
"""

from typing import Any, Literal

import torch

from model.gpt import encode, eot_id, load_gpt, load_tokenizer
from service import metrics
from service.schemas.embeddings import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    encode_vector,
)
from service.settings import Settings
from service.transport.messages import AttentionJob, IntrospectionJob, MapJob
from service.workers.batched import BatchChannel, BatchedWorker
from service.workers.introspection import GPTIntrospection, IntrospectionResponse

Format = Literal["float", "base64"]
Texts = tuple[list[str | list[int]], Format]  # a decoded /v1/embeddings request
Vectors = tuple[list[list[float]], int, Format]  # its answer: vectors, tokens embedded, format


def _observe_introspection(kind: str, seconds: float) -> None:
    metrics.get().inside_seconds.labels(kind).observe(seconds)


class EmbeddingsWorker(BatchedWorker):
    def __init__(self, settings: Settings, channel: BatchChannel) -> None:
        super().__init__("/v1/embeddings", channel)
        self.settings = settings

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        self.model = load_gpt(self.settings.gpt_dir, device)
        self.tok = load_tokenizer(self.settings.gpt_dir)
        self.eot = eot_id(self.tok)
        self.context = int(self.model.config.n_positions)
        self.vocab = int(self.model.config.vocab_size)
        self.width = int(self.model.config.n_embd)
        self.device = torch.device(device)
        self.introspection = GPTIntrospection(
            self.model, self.tok, self.settings.gpt_model_id, observe=_observe_introspection
        )

    # The routes (service/api/batched.py, service/api/introspection.py) have checked every request against the
    # model before sending it.
    def decode_request(self, request: EmbeddingRequest | IntrospectionJob) -> Texts | IntrospectionJob:
        if isinstance(request, EmbeddingRequest):
            return request.inputs, request.encoding_format
        return request

    @torch.inference_mode()
    def embed(self, inputs: list[str | list[int]]) -> tuple[torch.Tensor, list[int]]:
        ids = [(encode(self.tok, t) if isinstance(t, str) else t)[: self.context] or [self.eot] for t in inputs]
        lengths = [len(i) for i in ids]
        width = max(lengths)
        input_ids = torch.full((len(ids), width), self.eot, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.model.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu(), lengths

    def predict(self, batch: Any) -> Any:
        """Decoded requests in, their answers out: texts become (vectors, tokens, format); introspection jobs become
        their responses."""
        items: list[Texts | IntrospectionJob] = batch
        out: list[Any] = [None] * len(items)
        jobs = [(i, x) for i, x in enumerate(items) if isinstance(x, AttentionJob | MapJob)]
        texts = [(i, x) for i, x in enumerate(items) if not isinstance(x, AttentionJob | MapJob)]
        if jobs:
            for (i, _), answer in zip(jobs, self.introspection.run([job for _, job in jobs]), strict=True):
                out[i] = answer
        if texts:
            for (i, _), vectors in zip(texts, self._embed_requests([t for _, t in texts]), strict=True):
                out[i] = vectors
        return out

    def _embed_requests(self, batch: list[Texts]) -> list[Vectors]:
        flat = [item for inputs, _ in batch for item in inputs]
        vectors, lengths = self.embed(flat)
        out, i = [], 0
        for inputs, fmt in batch:
            n = len(inputs)
            out.append((vectors[i : i + n].tolist(), sum(lengths[i : i + n]), fmt))
            i += n
        return out

    def encode_response(self, output: Vectors | IntrospectionResponse) -> EmbeddingResponse:
        if not isinstance(output, tuple):
            # An introspection job's answer is already its response (the route declares its own response model).
            return output  # type: ignore[return-value]
        vectors, tokens, fmt = output
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=encode_vector(v, fmt)) for i, v in enumerate(vectors)],
            model=self.settings.gpt_model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
