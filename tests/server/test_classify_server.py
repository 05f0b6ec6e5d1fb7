"""POST /v1/classify, /health and /metrics on a real server process, and its shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from model.pixels import SYMBOLS, single_flip_examples, symbol_templates
from tests.conftest import ServerProcess, start_server

PLUS_GRID = [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]


def batch_size_histogram(metrics_text: str) -> dict[str, float]:
    """The tinyserve_classify_batch_size samples: bucket bounds ('1.0', ..., '+Inf'), 'count' and 'sum'."""
    samples = {}
    for line in metrics_text.splitlines():
        bucket = re.fullmatch(r'tinyserve_classify_batch_size_bucket\{le="([^"]+)"\} (\S+)', line)
        total = re.fullmatch(r"tinyserve_classify_batch_size_(count|sum) (\S+)", line)
        if bucket:
            samples[bucket[1]] = float(bucket[2])
        elif total:
            samples[total[1]] = float(total[2])
    return samples


def test_health_is_ok(base_url: str) -> None:
    response = httpx.get(f"{base_url}/health")
    assert response.status_code == 200 and response.text == "ok"


@pytest.mark.parametrize("pixels", [PLUS_GRID, [v for row in PLUS_GRID for v in row]], ids=["grid", "flat"])
def test_classify_one(base_url: str, pixels: list) -> None:
    response = httpx.post(f"{base_url}/v1/classify", json={"pixels": pixels})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["symbol"] == "plus"
    assert list(body["probabilities"]) == list(SYMBOLS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["probabilities"]["plus"] > 0.9


def test_concurrent_requests_are_right_and_batched(base_url: str) -> None:
    """64 requests at once (clean symbols and single-flip variants) come back right, in shared batches."""
    clean = symbol_templates()
    flips, flip_labels = single_flip_examples()
    inputs = [*clean.tolist(), *flips.tolist()] * 2
    labels = [*range(len(SYMBOLS)), *flip_labels.tolist()] * 2
    inputs, labels = inputs[:64], labels[:64]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/classify", json={"pixels": x}) for x in inputs))

    before = batch_size_histogram(httpx.get(f"{base_url}/metrics").text)
    responses = asyncio.run(send_all())
    after = batch_size_histogram(httpx.get(f"{base_url}/metrics").text)

    assert [r.status_code for r in responses] == [200] * len(inputs)
    assert [r.json()["symbol"] for r in responses] == [SYMBOLS[label] for label in labels]
    batches = after["count"] - before["count"]
    requests = after["sum"] - before["sum"]
    singles = after["1.0"] - before["1.0"]
    assert requests == len(inputs)  # every request went through one batch
    assert batches < len(inputs), "every request ran in a batch of its own"
    assert singles < batches, "no batch held more than one request"


def test_metrics_served_without_redirect(base_url: str) -> None:
    response = httpx.get(f"{base_url}/metrics", follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE tinyserve_classify_batch_size histogram" in response.text


BAD_BODIES = {
    "nan": ('{"pixels": [NaN, 0, 0, 0, 0, 0, 0, 0, 0]}', "pixels"),
    "infinity": ('{"pixels": [[0, 0, 0], [0, Infinity, 0], [0, 0, 0]]}', "pixels"),
    "out of range": ('{"pixels": [0, 0, 0, 0, 0, 0, 0, 0, 1.5]}', "pixels"),
    "8 values": ('{"pixels": [0, 0, 0, 0, 0, 0, 0, 0]}', "pixels"),
    "short row": ('{"pixels": [[0, 0, 0], [0, 0], [0, 0, 0]]}', "pixels"),
    "string": ('{"pixels": ["a", 0, 0, 0, 0, 0, 0, 0, 0]}', "pixels"),
    "missing": ('{"image": [0, 0, 0, 0, 0, 0, 0, 0, 0]}', "pixels"),
}


@pytest.mark.parametrize(("body", "field"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_get_422_naming_the_field(base_url: str, body: str, field: str) -> None:
    response = httpx.post(f"{base_url}/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(field in error["loc"] for error in response.json()["detail"]), response.text


def test_bad_body_in_a_crowd_fails_alone(base_url: str) -> None:
    """A bad body is stopped before the queue, so the good requests around it are still answered."""

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            good = [client.post("/v1/classify", json={"pixels": PLUS_GRID}) for _ in range(8)]
            bad = client.post("/v1/classify", json={"pixels": [2] * 9})
            return await asyncio.gather(bad, *good)

    bad, *good = asyncio.run(send())
    assert bad.status_code == 422
    assert all(r.status_code == 200 and r.json()["symbol"] == "plus" for r in good)


def test_sigterm_stops_every_process(tmp_path) -> None:
    """A server of its own, so stopping it here leaves the shared one running."""
    running: ServerProcess = start_server(tmp_path)
    assert httpx.post(f"{running.url}/v1/classify", json={"pixels": PLUS_GRID}).status_code == 200
    survivors = running.stop()
    assert running.process.returncode is not None
    assert not survivors, f"processes survived SIGTERM: {survivors}"
