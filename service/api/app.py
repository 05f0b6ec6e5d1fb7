"""Everything the API-server processes answer, put on LitServe's FastAPI app before it forks them: the routes of
every model, /metrics, the playground, the error handlers and the middleware (outermost last)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import metrics
from service.api.batched import add_batched_routes
from service.api.errors import install_error_handlers
from service.api.gpt.routes import GPTRoutes
from service.api.gpt.served import ServedGPT
from service.api.guard import Guard
from service.api.introspection import add_introspection_routes
from service.api.playground import add_playground
from service.runtime.state import ServerState
from service.settings import Settings
from service.transport.batch_client import BatchClient
from service.transport.channel import ChannelAddress
from service.transport.gpt_client import GPTClient


@dataclass(frozen=True)
class Channels:
    """Where each model's workers listen: plain data, made by the main process."""

    gpt: ChannelAddress
    classify: ChannelAddress
    embeddings: ChannelAddress


def add_api(app: FastAPI, settings: Settings, state: ServerState, channels: Channels) -> None:
    """The API side, built once in the main process and inherited by every forked API server: one tokenizer, one
    client per model (each opens its sockets in its own process, on first use)."""
    gpt = ServedGPT.load(settings, GPTClient(channels.gpt, state))
    embeddings = BatchClient(channels.embeddings, settings.request_timeout, state)
    GPTRoutes(gpt).register(app)
    add_batched_routes(app, BatchClient(channels.classify, settings.request_timeout, state), embeddings, gpt)
    add_introspection_routes(app, settings, gpt, embeddings)
    # Plain routes, not a mounted app (a mount answers /metrics with a 307); /metrics/ too, so that a scraper
    # configured either way gets the samples without a redirect.
    for path in ("/metrics", "/metrics/"):
        app.add_api_route(path, metrics.metrics_endpoint, methods=["GET"], include_in_schema=False)
    add_playground(app, settings.pixels_dir)
    install_error_handlers(app)
    app.add_middleware(Guard, settings=settings, state=state)
    if settings.cors_origins:  # closed unless origins are configured
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    # Added last, so outermost: it also counts the answers the Guard and CORS give without reaching a route.
    app.add_middleware(metrics.RequestMetrics, router=app.router)
