"""OpenAI-compatible `/v1/embeddings` for the GPT: the mean of the last hidden state over the tokens, L2-normalised.

A plain LitServe batched API: requests arriving together run as one padded forward pass. Inputs (texts or token
ids) longer than the context keep their first `context` tokens (the usage counts what was embedded).
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation unevaluated.

from typing import Any, Literal

import litserve as ls
import torch
from fastapi import HTTPException

from model.gpt import encode, eot_id, load_gpt, load_tokenizer
from service.batching import batched_loop
from service.errors import openai_error
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


class EmbeddingsAPI(ls.LitAPI):
    def __init__(self, settings: Settings) -> None:
        super().__init__(
            max_batch_size=settings.embeddings_max_batch_size,
            batch_timeout=settings.embeddings_batch_timeout,
            api_path="/v1/embeddings",
            loop=batched_loop(settings.embeddings_max_batch_size),
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

    def check_request(self, request: EmbeddingRequest) -> None:
        """400 for what the schema cannot know: ids outside the vocabulary, a `dimensions` not the model's.

        Also called by the batched loop before a request joins a batch, so that it fails alone."""
        bad = out_of_vocabulary(request.input, self.vocab, "input")
        if bad is not None:
            raise HTTPException(
                400, openai_error(f"{bad}: token id outside the vocabulary (size {self.vocab})", bad, "invalid_value")
            )
        if request.dimensions is not None and request.dimensions != self.width:
            raise HTTPException(
                400,
                openai_error(
                    f"dimensions: this model's embeddings have {self.width} dimensions and cannot be shortened",
                    "dimensions",
                    "invalid_value",
                ),
            )

    def decode_request(self, request: EmbeddingRequest) -> tuple[list[str | list[int]], Format]:
        self.check_request(request)
        return request.inputs, request.encoding_format

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
        """Requests' (inputs, format) in, (vectors, tokens, format) out, a list of each when batched."""
        if isinstance(batch, tuple):
            # With max_batch_size=1 LitServe skips batch()/unbatch() and passes one decoded request.
            return self.predict([batch])[0]
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

    def encode_response(self, output: tuple[list[list[float]], int, Format]) -> EmbeddingResponse:
        vectors, tokens, fmt = output
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=encode_vector(v, fmt)) for i, v in enumerate(vectors)],
            model=self.settings.gpt_model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
