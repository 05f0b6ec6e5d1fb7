"""The GPT's HTTP side, in each API-server process: a LitServe spec that routes the GPT's endpoints.

Completions (service/completions.py) and chat (service/chat.py) are protocols on the same GPT client; the model
list and the tokenizer endpoints (so a user can see what the model sees) are small enough to live here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from litserve.specs.base import LitSpec

from model.gpt import decode, encode
from service.channel import ChannelAddress
from service.chat import Chat
from service.choices import ServedGPT
from service.completions import Completions
from service.errors import bad_request, model_not_found
from service.gpt_client import GenerateClient, GPTClient
from service.schemas.completions import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from service.settings import Settings

if TYPE_CHECKING:  # guards imports the metrics, which the protocol code does not need
    from service.guards import Drain


class GPTSpec(LitSpec):
    def __init__(
        self,
        settings: Settings,
        channel: ChannelAddress,
        drain: Drain | None = None,
        client: GenerateClient | None = None,
    ) -> None:
        self.client = client if client is not None else GPTClient(channel, drain)
        super().__init__()
        self.api_path = "/v1/completions"
        self.settings = settings
        self.created = int(time.time())
        self.gpt: ServedGPT | None = ServedGPT.load(settings, self.client)
        self.completions = Completions(self.gpt)
        self.chat = Chat(self.gpt)

    # LitServe (0.2.19, LitServer._start_server) writes each API server's response queue id here just before it
    # forks that server: the id the GPT worker answers to.
    @property
    def response_queue_id(self) -> int | None:
        return self.client.queue_id if isinstance(self.client, GPTClient) else None

    @response_queue_id.setter
    def response_queue_id(self, value: int | None) -> None:
        if value is not None and isinstance(self.client, GPTClient):
            self.client.queue_id = value

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the spawned GPT worker, which never tokenizes: keep the tokenizer and handlers out.
        state = super().__getstate__()
        state.update(gpt=None, completions=None, chat=None)
        return state

    @property
    def stream(self) -> bool:
        return True

    def pre_setup(self, lit_api: Any) -> None:
        self.add_endpoint("/v1/completions", self.completions.create, ["POST"])
        self.add_endpoint("/v1/chat/completions", self.chat.create, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/v1/models/{model_id}", self.model_card, ["GET"])
        self.add_endpoint("/v1/tokenize", self.tokenize, ["POST"])
        self.add_endpoint("/v1/detokenize", self.detokenize, ["POST"])

    @property
    def served(self) -> ServedGPT:
        assert self.gpt is not None, "the GPT worker's copy of the spec serves nothing"
        return self.gpt

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output

    def _cards(self) -> list[ModelCard]:
        return [
            ModelCard(id=self.settings.gpt_model_id, created=self.created, max_model_len=self.served.context_length),
            ModelCard(id=self.settings.pixels_model_id, created=self.created),
        ]

    async def models(self) -> ModelList:
        return ModelList(data=self._cards())

    async def model_card(self, model_id: str) -> ModelCard:
        card = next((c for c in self._cards() if c.id == model_id), None)
        if card is None:
            raise model_not_found(model_id)
        return card

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        gpt = self.served
        gpt.check_model(body.model)
        ids = encode(gpt.tok, body.prompt)
        return TokenizeResponse(
            count=len(ids),
            max_model_len=gpt.context_length,
            tokens=ids,
            token_strs=[decode(gpt.tok, [i]) for i in ids],
        )

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        gpt = self.served
        gpt.check_model(body.model)
        bad = next((t for t in body.tokens if t >= gpt.vocab_size), None)
        if bad is not None:
            raise bad_request(f"token id {bad} is outside the vocabulary (size {gpt.vocab_size})", "tokens")
        return DetokenizeResponse(prompt=decode(gpt.tok, body.tokens))
