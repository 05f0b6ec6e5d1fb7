"""Locust users for tinyserve: streamed completions (with TTFT as its own entry) and classify.

    locust -f deploy/locust/locustfile.py --host http://127.0.0.1:8000                         # web UI on :8089
    locust -f deploy/locust/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s

Locust has no TTFT of its own: each streamed completion is reported twice, as `POST /v1/completions` (the whole
stream, from the POST to the last chunk) and as `TTFT /v1/completions` (to the first chunk that carries choices),
fired with `events.request.fire`. A stream that ends without its last chunk, or that carries an error, is a failure.

Environment: TINYSERVE_API_KEY (sent as a bearer token when set), LOCUST_MAX_TOKENS (default 64),
LOCUST_PROMPTS (a file of prompts separated by blank lines; default a few lines of Shakespeare). Pick users with
`--class-picker` in the UI or by naming them on the command line (`CompletionsUser`, `ClassifyUser`).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, between, events, task

MAX_TOKENS = int(os.environ.get("LOCUST_MAX_TOKENS", "64"))
_DEFAULT_PROMPTS = [
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n",
    "HAMLET.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "MACBETH.\nTo-morrow, and to-morrow, and to-morrow,\nCreeps in this petty pace from day to day,\n",
    "JAQUES.\nAll the world's a stage,\nAnd all the men and women merely players;\n",
]


def _prompts() -> list[str]:
    path = os.environ.get("LOCUST_PROMPTS")
    if not path:
        return _DEFAULT_PROMPTS
    prompts = [p.strip() + "\n" for p in Path(path).read_text().split("\n\n") if p.strip()]
    return prompts or _DEFAULT_PROMPTS


PROMPTS = _prompts()
SYMBOLS = {
    "plus": [-1, 1, -1, 1, 1, 1, -1, 1, -1],
    "cross": [1, -1, 1, -1, 1, -1, 1, -1, 1],
    "ring": [1, 1, 1, 1, -1, 1, 1, 1, 1],
    "dot": [-1, -1, -1, -1, 1, -1, -1, -1, -1],
}


def _headers() -> dict[str, str]:
    key = os.environ.get("TINYSERVE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


class CompletionsUser(HttpUser):
    """Streams a completion, think time 0-0.5 s; one user is one client holding at most one stream."""

    wait_time = between(0, 0.5)
    weight = 3

    @task
    def stream_completion(self) -> None:
        body = {
            "prompt": random.choice(PROMPTS),
            "max_tokens": MAX_TOKENS,
            "temperature": 0.8,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t0 = time.perf_counter()
        ttft: float | None = None
        finished = done = False
        error: str | None = None
        with self.client.post(
            "/v1/completions",
            json=body,
            headers=_headers(),
            stream=True,
            catch_response=True,
            name="POST /v1/completions",
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            try:
                for raw in resp.iter_lines():
                    line = raw.decode() if isinstance(raw, bytes) else raw
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        error = f"stream error: {chunk['error']}"
                        break
                    choices = chunk.get("choices")
                    if choices:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        finished = finished or bool(choices[0].get("finish_reason"))
            except Exception as exc:  # noqa: BLE001 - any broken stream is this request's failure
                error = f"broken stream: {type(exc).__name__}: {exc}"
            # Locust timed the POST only up to the response headers: make its entry cover the whole stream.
            resp.request_meta["response_time"] = (time.perf_counter() - t0) * 1000
            if error is None and not (done or finished):
                error = "stream ended before its last chunk"
            if error is not None:
                resp.failure(error)
            else:
                resp.success()
        if ttft is not None:
            events.request.fire(
                request_type="TTFT",
                name="/v1/completions",
                response_time=ttft * 1000,
                response_length=0,
                exception=None,
                context={},
            )


class ClassifyUser(HttpUser):
    """Classifies one of the four symbols with a little noise, no think time."""

    wait_time = between(0, 0.05)
    weight = 1

    @task
    def classify(self) -> None:
        pixels = random.choice(list(SYMBOLS.values()))
        noisy = [max(-1.0, min(1.0, p + random.gauss(0, 0.2))) for p in pixels]
        with self.client.post(
            "/v1/classify", json={"pixels": noisy}, headers=_headers(), catch_response=True, name="POST /v1/classify"
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif resp.json().get("symbol") not in SYMBOLS:
                resp.failure(f"unexpected answer: {resp.text[:200]}")
            else:
                resp.success()
