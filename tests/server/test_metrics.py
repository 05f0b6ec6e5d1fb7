"""/metrics on the shared server: request and info metrics move by the right amounts; promtool finds nothing."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import version

import httpx
import pytest
import torch

from model.gpt import count_parameters, load_gpt
from model.pixels import load_pixels
from service.metrics import UNMATCHED
from service.settings import WEIGHTS_DIR
from tests.helpers import metric_value

PLUS = {"pixels": [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]}
OUT_OF_RANGE = {"pixels": [1, -1, 1, -1, 1, -1, 1, -1, 2]}


def requests_total(base_url: str, **labels: str) -> float:
    return metric_value(base_url, "tinyserve_http_requests_total", labels)


def test_requests_counted_by_route_and_status(base_url: str) -> None:
    ok = {"method": "POST", "path": "/v1/classify", "status": "200"}
    invalid = {"method": "POST", "path": "/v1/classify", "status": "422"}
    before_ok = requests_total(base_url, **ok)
    before_invalid = requests_total(base_url, **invalid)
    before_timed = metric_value(base_url, "tinyserve_http_request_duration_seconds_count", ok)

    for _ in range(3):
        assert httpx.post(f"{base_url}/v1/classify", json=PLUS).status_code == 200
    assert httpx.post(f"{base_url}/v1/classify", json=OUT_OF_RANGE).status_code == 422
    for path in ("/health", "/metrics", "/metrics/"):  # probes and scrapes are not traffic
        assert httpx.get(f"{base_url}{path}").status_code == 200

    assert requests_total(base_url, **ok) - before_ok == 3
    assert requests_total(base_url, **invalid) - before_invalid == 1
    assert metric_value(base_url, "tinyserve_http_request_duration_seconds_count", ok) - before_timed == 3
    for path in ("/health", "/metrics", "/metrics/"):
        assert requests_total(base_url, path=path) == 0, path


def test_unknown_paths_share_one_label(base_url: str) -> None:
    """A scanner's random paths must not each create a series."""
    before = requests_total(base_url, path=UNMATCHED, status="404")
    for path in ("/no-such-page", "/wp-login.php", "/v1/nothing"):
        assert httpx.get(f"{base_url}{path}").status_code == 404
    assert requests_total(base_url, path=UNMATCHED, status="404") - before == 3
    text = httpx.get(f"{base_url}/metrics").text
    assert "wp-login" not in text


def test_streamed_completion_is_timed_to_its_end(base_url: str) -> None:
    labels = {"method": "POST", "path": "/v1/completions", "status": "200"}
    before = metric_value(base_url, "tinyserve_http_request_duration_seconds_count", labels)
    before_sum = metric_value(base_url, "tinyserve_http_request_duration_seconds_sum", labels)
    body = {"prompt": "ROMEO.\n", "max_tokens": 8, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    assert "data: [DONE]" in lines
    assert metric_value(base_url, "tinyserve_http_request_duration_seconds_count", labels) - before == 1
    # A whole stream of 8 tokens takes longer than a decode step: the time ends at the last byte, not the headers.
    assert metric_value(base_url, "tinyserve_http_request_duration_seconds_sum", labels) - before_sum > 0.001


def test_metrics_with_trailing_slash_answers_without_redirect(base_url: str) -> None:
    response = httpx.get(f"{base_url}/metrics/", follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "tinyserve_classify_batch_size_bucket" in response.text


def test_info_metrics_describe_the_models_and_build(base_url: str) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpt_dtype = "bfloat16" if device == "cuda" else "float32"
    pixels = {"model": "tinyserve-pixels", "parameters": str(sum(p.numel() for p in load_pixels().parameters()))}
    gpt = {"model": "tinyserve-gpt", "parameters": str(count_parameters(load_gpt(WEIGHTS_DIR / "gpt")))}
    assert metric_value(base_url, "tinyserve_model_info", {**pixels, "device": device, "dtype": "float32"}) == 1
    assert metric_value(base_url, "tinyserve_model_info", {**gpt, "device": device, "dtype": gpt_dtype}) == 1
    build = {"version": version("tinyserve"), "torch": version("torch"), "litserve": version("litserve")}
    assert metric_value(base_url, "tinyserve_build_info", build) == 1


def test_promtool_finds_nothing_to_report(base_url: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    # Traffic on every kind of metric first, so that labelled series exist and are checked too.
    assert httpx.post(f"{base_url}/v1/classify", json=PLUS).status_code == 200
    completion = httpx.post(f"{base_url}/v1/completions", json={"prompt": "KING.\n", "max_tokens": 4}, timeout=60)
    assert completion.status_code == 200
    text = httpx.get(f"{base_url}/metrics").text
    assert "tinyserve_http_requests_total{" in text and "tinyserve_gpt_requests_finished_total{" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_classify_predictions_are_counted_by_symbol(base_url: str) -> None:
    name = "tinyserve_classify_predictions_total"
    before = metric_value(base_url, name, {"symbol": "plus"})
    plus = [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]
    for _ in range(3):
        assert httpx.post(f"{base_url}/v1/classify", json={"pixels": plus}).json()["symbol"] == "plus"
    assert metric_value(base_url, name, {"symbol": "plus"}) - before == 3


def test_batched_apis_record_each_requests_time_in_the_queue(base_url: str) -> None:
    name = "tinyserve_batched_request_queue_time_seconds_count"
    for path, body in (("/v1/classify", PLUS), ("/v1/embeddings", {"input": ["to be", "or not"]})):
        before = metric_value(base_url, name, {"api": path})
        assert httpx.post(f"{base_url}{path}", json=body, timeout=60).status_code == 200
        assert metric_value(base_url, name, {"api": path}) - before == 1, path


def test_a_conversations_next_turn_is_counted_as_prefix_cache_hits(base_url: str) -> None:
    def counters() -> tuple[float, float]:
        names = ("tinyserve_gpt_prefix_cache_queries_total", "tinyserve_gpt_prefix_cache_hits_total")
        queries, hits = (metric_value(base_url, name, {}) for name in names)
        return queries, hits

    messages = [
        {"role": "system", "content": "A room in the castle. Enter OTHELLO and IAGO, talking of the war."},
        {"role": "user", "content": "Honest Iago, what news from Cyprus?"},
    ]
    before = counters()
    first = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": messages, "max_tokens": 8}, timeout=60)
    reply = first.json()["choices"][0]["message"]["content"]
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Then let us go."}]
    second = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": messages, "max_tokens": 8}, timeout=60)
    after = counters()
    prompts = [r.json()["usage"]["prompt_tokens"] for r in (first, second)]
    assert after[0] - before[0] == sum(prompts)
    # The template puts earlier turns first: the whole first prompt is a prefix of the second.
    assert prompts[0] <= after[1] - before[1] < prompts[1]
    assert "tinyserve_gpt_kv_cache_usage_perc " in httpx.get(f"{base_url}/metrics").text
