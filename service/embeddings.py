"""OpenAI-compatible `/v1/embeddings` for the GPT: the mean of the last hidden state over the tokens, L2-normalised.

A plain LitServe batched API: requests arriving together run as one padded forward pass. Texts longer than the
context keep their first `context` tokens (the usage counts what was embedded).
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation unevaluated.

from typing import Any

import litserve as ls
import torch

from model.gpt import encode, eot_id, load_gpt, load_tokenizer
from service.batching import batched_loop
from service.schemas.completions import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from service.settings import Settings


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
        self.device = torch.device(device)

    def decode_request(self, request: EmbeddingRequest) -> list[str]:
        return request.texts

    def batch(self, inputs: list[list[str]]) -> list[list[str]]:
        return inputs

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
        ids = [(encode(self.tok, t) or [self.eot])[: self.context] for t in texts]
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

    def predict(self, batch: list[list[str]]) -> list[tuple[list[list[float]], int]]:
        if batch and isinstance(batch[0], str):
            # With max_batch_size=1 LitServe skips batch()/unbatch() and passes one decoded request.
            return self.predict([batch])[0]  # type: ignore[list-item, return-value]
        flat = [t for texts in batch for t in texts]
        vectors, lengths = self.embed(flat)
        out, i = [], 0
        for texts in batch:
            n = len(texts)
            out.append((vectors[i : i + n].tolist(), sum(lengths[i : i + n])))
            i += n
        return out

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: tuple[list[list[float]], int]) -> EmbeddingResponse:
        vectors, tokens = output
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
            model=self.settings.gpt_model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
