"""What stands in front of every endpoint: the optional API key and the bounded number of requests in flight.

A pure ASGI middleware (not BaseHTTPMiddleware, which would buffer streamed responses): a request over its path's
limit is answered 503 with Retry-After at once, in OpenAI's error shape, so a client backs off instead of queueing
without bound. Limits count the requests of all API-server processes together (shared memory).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics
from service.api.errors import openai_error
from service.runtime.state import ServerState
from service.settings import Settings

# Paths that need the API key when one is set; /health, /metrics and the playground stay open.
PROTECTED_PREFIX = "/v1/"
# Paths still answered normally while draining: a scraper should see the shutdown happen.
ALWAYS_OPEN = ("/metrics", "/metrics/")


# Paths that share another's bound: chat and responses run on the GPT's batch slots and queue, as completions do.
SHARED_LIMITS = {"/v1/chat/completions": "/v1/completions", "/v1/responses": "/v1/completions"}


async def _reply(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            + headers,
        }
    )
    await send({"type": "http.response.body", "body": payload})


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings, state: ServerState) -> None:
        self.app = app
        self.state = state
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.expected = f"Bearer {key}".encode() if key else b""
        self.limits = {
            "/v1/completions": settings.gpt_max_batch_size + settings.gpt_max_waiting,
            "/v1/embeddings": settings.embeddings_max_inflight,
            "/v1/classify": settings.classify_max_inflight,
            # Answered by the embeddings worker (service/api/introspection.py): each bounded as embeddings are.
            "/v1/attention": settings.embeddings_max_inflight,
            "/v1/embeddings/map": settings.embeddings_max_inflight,
        }

    def _label(self, path: str) -> str:
        # Only known paths become label values: a scanner's random URLs must not create new series.
        return path if path in self.limits or path in SHARED_LIMITS else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in ALWAYS_OPEN:
            await self.app(scope, receive, send)
            return
        if self.state.stopping or self.state.failed:
            # SIGTERM, or a dead child process: health says so (the orchestrator stops routing here, or restarts
            # us) and new work goes elsewhere.
            metrics.get().rejected.labels(self._label(path), "shutting_down").inc()
            why = "a server process died; the server is restarting" if self.state.failed else "server shutting down"
            await _reply(
                send,
                503,
                openai_error(why, None, "worker_died" if self.state.failed else "shutting_down", "server_error"),
                [(b"retry-after", b"1"), (b"connection", b"close")],
            )
            return
        self.state.add(1)
        try:
            await self._guarded(path, scope, receive, send)
        finally:
            self.state.add(-1)

    async def _guarded(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected and path.startswith(PROTECTED_PREFIX):
            given = dict(scope["headers"]).get(b"authorization", b"")
            # Constant-time comparison: the time taken must not tell how much of a guess was right.
            if not hmac.compare_digest(given, self.expected):
                metrics.get().rejected.labels(self._label(path), "unauthorized").inc()
                await _reply(
                    send,
                    401,
                    openai_error(
                        "missing or wrong API key (Authorization: Bearer …)",
                        None,
                        "invalid_api_key",
                        "authentication_error",
                    ),
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        pool = SHARED_LIMITS.get(path, path)
        limit = self.limits.get(pool)
        if limit is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        count = self.state.per_path[pool]
        with count.get_lock():  # check and take a place in one step, across processes
            admitted = count.value < limit
            if admitted:
                count.value += 1
        if not admitted:
            metrics.get().rejected.labels(self._label(path), "overloaded").inc()
            await _reply(
                send,
                503,
                openai_error(
                    f"server busy: {limit} requests in flight on {pool}; retry shortly",
                    None,
                    "overloaded",
                    "server_error",
                ),
                [(b"retry-after", b"1")],
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with count.get_lock():
                count.value -= 1
