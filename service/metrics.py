"""Every Prometheus metric of the server (prefix tinyserve_), merged across processes and served at /metrics.

LitServe runs requests through several processes (API servers forked, inference workers spawned), so only
prometheus_client's multiprocess mode gives one consistent view: each process writes its samples to files in
PROMETHEUS_MULTIPROC_DIR and /metrics merges them. Importing this module changes nothing: the server's main process
sets the folder up when it starts (`multiprocess_folder`, before any metric is recorded), and the processes it starts
inherit it. Each process builds its metrics on first use (`get`), on that folder when there is one, else in-process
(as in-process tests run them).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets from 1 ms (a tiny model's decode step) to a minute (a long stream under load).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric of the server; one per process, built by `get`.

    registry=None: the samples live in the multiprocess files and /metrics collects them from there, not from a
    registry.
    """

    def __init__(self) -> None:
        self.classify_batch_size = Histogram(
            "tinyserve_classify_batch_size",
            "Classify requests run together in one batch by the worker's dynamic batcher.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=None,
        )
        self.classify_predictions = Counter(
            "tinyserve_classify_predictions",
            "Classify answers, by the symbol answered.",
            ["symbol"],
            registry=None,
        )
        self.classify_predict_seconds = Histogram(
            "tinyserve_classify_predict_seconds",
            "Seconds for one batched forward pass of the pixel classifier (tensor in, probabilities out).",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=None,
        )

        # Filled by service/workers/batched.py's batch thread, from each request's arrival time at its API server.
        self.batched_queue_time = Histogram(
            "tinyserve_batched_request_queue_time_seconds",
            "Seconds from the API server queuing a classify or embeddings request to a worker taking it into a batch.",
            ["api"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=None,
        )

        # Filled by the embeddings worker (workers/embeddings.py), which also runs /v1/attention and
        # /v1/embeddings/map.
        self.inside_seconds = Histogram(
            "tinyserve_inside_seconds",
            "Seconds for one batched pass of the GPT's attention or embedding-map requests, by kind.",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=None,
        )

        self.gpt_running = Gauge(
            "tinyserve_gpt_requests_running",
            "Sequences the engine is decoding now.",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.gpt_waiting = Gauge(
            "tinyserve_gpt_requests_waiting",
            "Requests taken off the queue by the worker and waiting for a batch slot.",
            multiprocess_mode="livesum",
            registry=None,
        )
        # vLLM's prefix_cache_queries and prefix_cache_hits (tokens) and kv_cache_usage_perc (a fraction, 0 to 1).
        self.gpt_prefix_cache_queries = Counter(
            "tinyserve_gpt_prefix_cache_queries",
            "Prompt tokens looked up in the engine's prefix cache.",
            registry=None,
        )
        self.gpt_prefix_cache_hits = Counter(
            "tinyserve_gpt_prefix_cache_hits",
            "Prompt tokens found in the engine's prefix cache, whose prefill was skipped.",
            registry=None,
        )
        self.gpt_kv_cache_usage = Gauge(
            "tinyserve_gpt_kv_cache_usage_perc",
            "Fraction of the engine's KV-cache rows held by running sequences (prefix-cache rows count as free).",
            multiprocess_mode="livemax",  # one GPT worker a device: the fullest one
            registry=None,
        )
        self.gpt_prompt_tokens = Counter(
            "tinyserve_gpt_prompt_tokens",
            "Prompt tokens of the requests the engine took, cached ones included.",
            registry=None,
        )
        self.gpt_generation_tokens = Counter(
            "tinyserve_gpt_generation_tokens", "Tokens generated by the engine.", registry=None
        )
        self.gpt_finished = Counter(
            "tinyserve_gpt_requests_finished",
            "Sequences that left the engine, by finish reason (stop, length, cancelled, error).",
            ["finish_reason"],
            registry=None,
        )
        self.gpt_decode_batch_size = Histogram(
            "tinyserve_gpt_decode_batch_size",
            "Sequences decoded together in one engine step.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=None,
        )
        self.gpt_ttft = Histogram(
            "tinyserve_gpt_time_to_first_token_seconds",
            "From the request reaching the API server to its first token leaving the engine.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.gpt_itl = Histogram(
            "tinyserve_gpt_inter_token_latency_seconds",
            "Between successive tokens of one sequence.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.gpt_e2e = Histogram(
            "tinyserve_gpt_e2e_request_latency_seconds",
            "From the request reaching the API server to its last token.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.gpt_queue_time = Histogram(
            "tinyserve_gpt_request_queue_time_seconds",
            "From the request reaching the API server to the engine taking it into a batch slot.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

        self.rejected = Counter(
            "tinyserve_requests_rejected",
            "Requests refused before reaching a model, by path and reason (overloaded, unauthorized, queue_full).",
            ["path", "reason"],
            registry=None,
        )

        self.http_requests = Counter(
            "tinyserve_http_requests",
            "HTTP requests answered, by method, route and status code (/metrics and /health are not counted).",
            ["method", "path", "status"],
            registry=None,
        )
        self.http_request_seconds = Histogram(
            "tinyserve_http_request_duration_seconds",
            "From a request reaching the API server to the last byte of its answer (the whole stream when streamed).",
            ["method", "path", "status"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        # Info metrics are gauges fixed at 1 whose labels carry the facts: prometheus_client's Info type has no
        # multiprocess mode. "max" merges the processes' copies into one series without a pid label.
        self.build_info = Gauge(
            "tinyserve_build_info",
            "Always 1; the labels give the versions of tinyserve, Python and the serving stack.",
            ["version", "python", "torch", "litserve", "transformers"],
            multiprocess_mode="max",
            registry=None,
        )
        self.model_info = Gauge(
            "tinyserve_model_info",
            "Always 1 for each model served; the labels give its id, parameter count, device type and dtype.",
            ["model", "parameters", "device", "dtype"],
            multiprocess_mode="max",
            registry=None,
        )

    def every(self) -> list[MetricWrapperBase]:
        """Every metric above, in the order built."""
        return [m for m in vars(self).values() if isinstance(m, MetricWrapperBase)]


# Two threads' first uses must not build two sets of metrics: both would write the same sample files.
_building = threading.Lock()


def get() -> Metrics:
    """This process's metrics, built on first use: on the multiprocess folder when PROMETHEUS_MULTIPROC_DIR is set
    (the server's processes), else in this process alone."""
    with _building:
        return _build()


@functools.cache
def _build() -> Metrics:
    # prometheus_client (0.26) picks its value class once, at its own import, which may precede the folder's setup:
    # pick it again now. A metric makes its values with it when built, and a labelled one at each new .labels().
    prometheus_values.ValueClass = prometheus_values.get_value_class()
    return Metrics()


def rebuild() -> None:
    """Build this process's metrics afresh at their next use, from the environment as it is then."""
    with _building:
        _build.cache_clear()


@contextmanager
def multiprocess_folder() -> Iterator[Path]:
    """The server's samples folder while the block runs: set PROMETHEUS_MULTIPROC_DIR, which the processes started
    in the block inherit (API servers forked, workers spawned), and build this process's metrics on it.

    Enter it before anything records a metric. A folder named by the operator is emptied of earlier samples and kept;
    one made here is removed at the end. Afterwards this process is back to in-process metrics.
    """
    given = os.environ.get(MULTIPROC_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="tinyserve-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    _clear_samples(folder)  # left by an earlier server that used the same folder
    os.environ[MULTIPROC_ENV] = str(folder)
    rebuild()
    try:
        yield folder
    finally:
        rebuild()
        if given:
            _clear_samples(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def _clear_samples(folder: Path) -> None:
    for db in folder.glob("*.db"):
        db.unlink(missing_ok=True)


# Scrapes and probes would swamp the request counts, and say nothing about the service's traffic.
UNCOUNTED_PATHS = frozenset({"/metrics", "/metrics/", "/health"})
UNMATCHED = "unmatched"  # one label for every unknown path: raw paths would let a scanner add series at will


class RequestMetrics:
    """ASGI middleware counting and timing each HTTP request by method, route template and status code.

    A pure ASGI middleware (BaseHTTPMiddleware would buffer streamed answers), registered outermost so that answers
    given by other middlewares (401, 503 while overloaded or draining) are counted too.
    """

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except BaseException as exc:
            # No answer started: 499 (nginx's "client closed request") when the client went away, else the 500
            # that Starlette's error middleware is about to send.
            if not status:
                status = 499 if isinstance(exc, asyncio.CancelledError) else 500
            raise
        finally:
            labels = (scope["method"], self._route(scope), str(status or 500))
            metrics = get()
            metrics.http_requests.labels(*labels).inc()
            metrics.http_request_seconds.labels(*labels).observe(time.perf_counter() - start)

    def _route(self, scope: Scope) -> str:
        """The route template that served the request; matched here when a middleware answered before routing."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.router.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", None) or UNMATCHED


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def parameter_count(weights: Path) -> int:
    """Parameters stored in a safetensors file, from its JSON header alone (no tensor is read)."""
    with weights.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def record_info(models: dict[str, tuple[Path, str]], device: str) -> None:
    """Set the build info and one model info series per model id: {id: (safetensors file, dtype)}."""
    metrics = get()
    metrics.build_info.labels(
        _package_version("tinyserve"),
        platform.python_version(),
        _package_version("torch"),
        _package_version("litserve"),
        _package_version("transformers"),
    ).set(1)
    for model_id, (weights, dtype) in models.items():
        try:
            parameters = str(parameter_count(weights))
        except (OSError, ValueError):
            parameters = "unknown"  # the worker loading it will fail with the real reason; /metrics need not
        metrics.model_info.labels(model_id, parameters, device, dtype).set(1)


def metrics_endpoint() -> Response:
    """GET /metrics: the samples of every live and past process of this server, in Prometheus text format (without
    a multiprocess folder, as in in-process tests: this process's own)."""
    registry = CollectorRegistry()
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        MultiProcessCollector(registry, path=folder)
    else:
        for metric in get().every():
            registry.register(metric)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
