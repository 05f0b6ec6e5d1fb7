"""Small helpers shared by the HTTP tests: SSE parsing and reading one value off /metrics."""

from __future__ import annotations

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
