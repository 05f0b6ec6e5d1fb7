"""The GPT's routes on the API server's app: completions, chat completions, responses, models, tokenize and
detokenize, all on one `ServedGPT` (the tokenizer and the client of this API-server process)."""

from __future__ import annotations

from fastapi import FastAPI

from service.api.gpt.chat import Chat
from service.api.gpt.completions import Completions
from service.api.gpt.responses import Responses
from service.api.gpt.served import ServedGPT
from service.api.gpt.structured import MaskRoutes
from service.api.models import ModelRoutes


class GPTRoutes:
    def __init__(self, gpt: ServedGPT) -> None:
        self.served = gpt
        self.completions = Completions(gpt)
        self.chat = Chat(gpt)
        self.responses = Responses(gpt, self.chat)
        self.models = ModelRoutes(gpt)
        self.masks = MaskRoutes(gpt)

    def register(self, app: FastAPI) -> None:
        app.add_api_route("/v1/completions", self.completions.create, methods=["POST"])
        app.add_api_route("/v1/chat/completions", self.chat.create, methods=["POST"])
        app.add_api_route("/v1/responses", self.responses.create, methods=["POST"])
        app.add_api_route("/v1/models", self.models.models, methods=["GET"])
        app.add_api_route("/v1/models/{model_id}", self.models.model_card, methods=["GET"])
        app.add_api_route("/v1/tokenize", self.models.tokenize, methods=["POST"])
        app.add_api_route("/v1/detokenize", self.models.detokenize, methods=["POST"])
        app.add_api_route("/v1/structured/mask", self.masks.mask, methods=["POST"])
