"""GET /v1/models (and one model's card), POST /v1/tokenize and /v1/detokenize: what is served, and the tokens the
GPT sees for a text (vLLM's tokenize extension)."""

from __future__ import annotations

import time

from model.gpt import decode, encode
from service.api.errors import model_not_found, out_of_vocabulary
from service.api.gpt.served import ServedGPT
from service.schemas.completions import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)


class ModelRoutes:
    def __init__(self, gpt: ServedGPT) -> None:
        self.gpt = gpt
        self.created = int(time.time())

    def _cards(self) -> list[ModelCard]:
        settings = self.gpt.settings
        return [
            ModelCard(id=settings.gpt_model_id, created=self.created, max_model_len=self.gpt.context_length),
            ModelCard(id=settings.pixels_model_id, created=self.created),
        ]

    async def models(self) -> ModelList:
        return ModelList(data=self._cards())

    async def model_card(self, model_id: str) -> ModelCard:
        card = next((c for c in self._cards() if c.id == model_id), None)
        if card is None:
            raise model_not_found(model_id)
        return card

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        gpt = self.gpt
        gpt.check_model(body.model)
        ids = encode(gpt.tok, body.prompt)
        return TokenizeResponse(
            count=len(ids),
            max_model_len=gpt.context_length,
            tokens=ids,
            token_strs=[decode(gpt.tok, [i]) for i in ids],
        )

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        gpt = self.gpt
        gpt.check_model(body.model)
        bad = next((i for i, t in enumerate(body.tokens) if t >= gpt.vocab_size), None)
        if bad is not None:
            raise out_of_vocabulary(f"tokens.{bad}", gpt.vocab_size)
        return DetokenizeResponse(prompt=decode(gpt.tok, body.tokens))
