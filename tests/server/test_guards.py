"""Overload, API key and deadlines: each behaviour fails its test without the code that gives it."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess, start_server
from tests.helpers import metric_value, sse_events, stream_in_background

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second server: an API key, and room for exactly one completion in flight."""
    server = start_server(tmp_path_factory.mktemp("guarded"), api_key=KEY, gpt_max_batch_size="1", gpt_max_waiting="0")
    yield server
    assert not server.stop()


def test_api_key_is_required_on_v1_but_not_on_health_and_metrics(guarded):
    body = {"prompt": "To be", "max_tokens": 2}
    missing = httpx.post(f"{guarded.url}/v1/completions", json=body)
    wrong = httpx.post(f"{guarded.url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
    for r in (missing, wrong):
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(f"{guarded.url}/v1/completions", json=body, headers=AUTH).status_code == 200
    assert httpx.post(f"{guarded.url}/v1/classify", json={"pixels": [0] * 9}).status_code == 401
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert httpx.get(f"{guarded.url}/health").status_code == 200
    assert httpx.get(f"{guarded.url}/metrics").status_code == 200


def test_past_the_bounded_queue_the_answer_is_an_immediate_503(guarded):
    started = threading.Event()
    finished: list[str] = []

    def long_stream() -> None:
        body = {"prompt": "KING.", "max_tokens": 200, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{guarded.url}/v1/completions", json=body, headers=AUTH, timeout=120) as r:
            for event in sse_events(r.iter_lines()):
                started.set()
                finished.append(event)

    rejected_before = metric_value(guarded.url, "tinyserve_requests_rejected_total", {"reason": "overloaded"})
    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(60)
    t0 = time.perf_counter()
    r = httpx.post(f"{guarded.url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=AUTH)
    elapsed = time.perf_counter() - t0
    t.join(120)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "overloaded"
    assert elapsed < 0.05 * 4  # answered at once (4x slack for a busy 2-core CI machine)
    assert finished[-1] == "[DONE]"  # the request in flight was not disturbed
    rejected = metric_value(guarded.url, "tinyserve_requests_rejected_total", {"reason": "overloaded"})
    assert rejected - rejected_before == 1
    # Once it finished there is room again.
    assert httpx.post(f"{guarded.url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=AUTH).is_success


def test_a_stream_past_its_deadline_ends_with_an_error_chunk_and_frees_its_slot(base_url):
    # 64 choices of 240 tokens through a 32-sequence batch: seconds of work, far past the 0.3 s deadline.
    body = {"prompt": ["KING."] * 8, "n": 8, "max_tokens": 240, "temperature": 0, "stream": True, "timeout": 0.3}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as r:
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "deadline_exceeded"
    deadline = time.monotonic() + 5
    while metric_value(base_url, "tinyserve_gpt_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric_value(base_url, "tinyserve_gpt_requests_running") == 0


def test_a_non_streamed_request_past_its_own_timeout_is_408(base_url):
    r = httpx.post(
        f"{base_url}/v1/completions",
        json={"prompt": ["KING."] * 8, "n": 8, "max_tokens": 240, "temperature": 0, "timeout": 0.2},
        timeout=60,
    )
    assert r.status_code == 408 and r.json()["error"]["code"] == "deadline_exceeded"


def test_sigterm_drains_in_flight_streams_then_exits_cleanly(tmp_path):
    server = start_server(tmp_path, shutdown_grace_seconds="60")
    t, events = stream_in_background(server.url)
    children = psutil.Process(server.process.pid).children(recursive=True)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # Draining: health and new requests say 503 while the stream in flight goes on.
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 503
    late = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=5)
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    assert not events or events[-1] != "[DONE]"
    t.join(120)
    assert events[-1] == "[DONE]" and len(events) > 10  # the stream finished whole
    assert server.process.wait(30) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_oversized_body_is_413(base_url):
    huge = {"prompt": "x" * (2 * 1024 * 1024)}  # above the 1 MiB default max_payload_size
    r = httpx.post(f"{base_url}/v1/completions", json=huge, timeout=30)
    assert r.status_code == 413


def test_cors_is_closed_by_default(base_url):
    r = httpx.options(
        f"{base_url}/v1/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
