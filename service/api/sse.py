"""Server-sent events as OpenAI streams them: one `data:` event per JSON chunk, then `data: [DONE]`."""

from __future__ import annotations

import json
from typing import Any

# No caching, and no buffering by a proxy (nginx reads X-Accel-Buffering): each event reaches the client at once.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def sse(body: dict[str, Any]) -> str:
    """One server-sent event carrying `body` as JSON."""
    return f"data: {json.dumps(body)}\n\n"


def sse_json(json_text: str) -> str:
    """One server-sent event carrying JSON already encoded (a pydantic model's `model_dump_json()`)."""
    return f"data: {json_text}\n\n"
