"""Small helpers shared by the HTTP tests: SSE parsing, reading one value off /metrics, a long stream."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sse_events(lines: Iterable[str]) -> Iterator[str]:
    """The payloads of `data:` lines of a server-sent event stream."""
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: ") :]


def metric_value(base_url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def stream_in_background(url: str) -> tuple[threading.Thread, list[str]]:
    """A long stream in a thread, returned once its first event has arrived; events collect in the list.

    64 choices of 240 tokens through a 32-sequence batch: seconds of work even on a fast machine, so the stream is
    surely still running when the test acts on the server.
    """
    events: list[str] = []
    first = threading.Event()

    def long_stream() -> None:
        body = {"prompt": ["KING."] * 8, "n": 8, "max_tokens": 240, "temperature": 0, "stream": True}
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
                for event in sse_events(r.iter_lines()):
                    first.set()
                    events.append(event)
        except httpx.TransportError:
            pass  # the server process holding the stream was killed: the events so far tell it

    t = threading.Thread(target=long_stream)
    t.start()
    assert first.wait(60)
    return t, events
