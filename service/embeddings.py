"""OpenAI-compatible `/v1/embeddings` for the GPT: the mean of the last hidden state over the tokens, L2-normalised.

A LitServe batched API on the worker's dynamic batcher (service/batch_worker.py): requests queued together run as
one padded forward pass. Inputs (texts or token ids) longer than the context keep their first `context` tokens (the
usage counts what was embedded). The same worker answers the jobs of /v1/attention and /v1/embeddings/map
(service/inside.py sends them on this API's channel): it holds a copy of the GPT that is not the decoding engine, and
a second copy in a process of its own would cost a worker's memory for no gain.
"""

from typing import Any, Literal

import torch
from litserve.specs.base import LitSpec

from model.gpt import encode, eot_id, load_gpt, load_tokenizer
from service import metrics
from service.batch_worker import BatchChannel, BatchLoop
from service.errors import bad_request
from service.inside_worker import AttentionJob, GPTInside, InsideJob, InsideResponse, MapJob
from service.litserve_adapter import GuardedAPI
from service.schemas.embeddings import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    encode_vector,
)
from service.schemas.inputs import out_of_vocabulary
from service.settings import Settings

Format = Literal["float", "base64"]
Texts = tuple[list[str | list[int]], Format]  # a decoded /v1/embeddings request
Vectors = tuple[list[list[float]], int, Format]  # its answer: vectors, tokens embedded, format


def _observe_inside(kind: str, seconds: float) -> None:
    metrics.INSIDE_SECONDS.labels(kind).observe(seconds)


class EmbeddingsAPI(GuardedAPI):
    def __init__(self, settings: Settings, channel: BatchChannel, spec: LitSpec | None = None) -> None:
        # The spec (service/batch_client.py's, in the server) makes the route; tests run the hooks without one.
        super().__init__(
            max_batch_size=channel.limits.max_batch_size,
            api_path="/v1/embeddings",
            loop=BatchLoop(channel),
            spec=spec,
        )
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
        self.inside = GPTInside(self.model, self.tok, self.settings.gpt_model_id, observe=_observe_inside)

    def check_request(self, request: EmbeddingRequest | InsideJob) -> None:
        """400 for what the schema cannot know: ids outside the vocabulary, a `dimensions` not the model's.

        The batch thread decodes each request alone, so a request refused here fails alone, not its batch. The
        inside routes' jobs arrive already checked."""
        if not isinstance(request, EmbeddingRequest):
            return
        bad = out_of_vocabulary(request.input, self.vocab, "input")
        if bad is not None:
            raise bad_request(f"{bad}: token id outside the vocabulary (size {self.vocab})", bad)
        if request.dimensions is not None and request.dimensions != self.width:
            message = f"dimensions: this model's embeddings have {self.width} dimensions and cannot be shortened"
            raise bad_request(message, "dimensions")

    # The /v1/embeddings route validates its body against this annotation; the jobs of the inside routes arrive
    # on the same channel already checked.
    def decode_request(self, request: EmbeddingRequest) -> Texts | InsideJob:
        item: EmbeddingRequest | InsideJob = request
        if not isinstance(item, EmbeddingRequest):
            return item
        self.check_request(item)
        return item.inputs, item.encoding_format

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

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
        """Decoded requests in, their answers out, a list of each when batched: texts become (vectors, tokens,
        format); inside jobs become their responses."""
        if isinstance(batch, tuple | AttentionJob | MapJob):
            # With max_batch_size=1 the batch thread skips batch()/unbatch() and passes one decoded request.
            return self.predict([batch])[0]
        items: list[Texts | InsideJob] = batch
        out: list[Any] = [None] * len(items)
        jobs = [(i, x) for i, x in enumerate(items) if isinstance(x, AttentionJob | MapJob)]
        texts = [(i, x) for i, x in enumerate(items) if isinstance(x, tuple)]
        if jobs:
            for (i, _), answer in zip(jobs, self.inside.run([job for _, job in jobs]), strict=True):
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

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Vectors | InsideResponse) -> EmbeddingResponse:
        if not isinstance(output, tuple):
            # An inside job's answer is already its response; it goes back to service/inside.py, whose routes
            # declare their own response models (this annotation is only /v1/embeddings' one).
            return output  # type: ignore[return-value]
        vectors, tokens, fmt = output
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=encode_vector(v, fmt)) for i, v in enumerate(vectors)],
            model=self.settings.gpt_model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
