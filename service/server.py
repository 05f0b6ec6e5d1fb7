"""One LitServer for every API, and a serve() that shuts the whole process tree down on SIGTERM."""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from types import FrameType

import litserve as ls
import torch
from fastapi.middleware.cors import CORSMiddleware

from model.gpt import pick_dtype
from service import metrics, supervisor
from service.batch_client import BatchClient, BatchSpec
from service.batch_worker import BatchChannel
from service.batcher import BatchLimits
from service.channel import ChannelAddress
from service.classify import ClassifyAPI
from service.embeddings import EmbeddingsAPI
from service.errors import install_error_handlers
from service.gpt_spec import GPTSpec
from service.gpt_worker import GPTAPI, announce_server_gone
from service.guards import Drain, Guard
from service.inside import add_inside_routes
from service.litserve_adapter import (
    KeepsAPIServers,
    devices_count,
    shutdown_event,
    watch_workers_ourselves,
    worker_count,
)
from service.playground import add_playground
from service.settings import Settings

logger = logging.getLogger(__name__)


def build_apis(settings: Settings, channel: ChannelAddress, drain: Drain) -> list[ls.LitAPI]:
    """Every API the server hosts, each with its own path, channel, workers and batching.

    The classifier's and the embeddings' channels live in folders inside the GPT's (`channel`), removed with it.
    """
    devices = channel.workers  # one GPT worker per device

    def batched(name: str, workers: int, limits: BatchLimits) -> tuple[BatchChannel, BatchSpec]:
        address = channel.beside(name, workers * devices)
        spec = BatchSpec(f"/v1/{name}", BatchClient(address, settings.request_timeout, drain))
        return BatchChannel(address, limits), spec

    classify = batched(
        "classify",
        settings.classify_workers,
        BatchLimits(
            settings.classify_max_batch_size, settings.classify_batch_timeout, settings.classify_max_queue_size
        ),
    )
    embeddings = batched(
        "embeddings",
        1,
        BatchLimits(
            settings.embeddings_max_batch_size, settings.embeddings_batch_timeout, settings.embeddings_max_queue_size
        ),
    )
    return [
        ClassifyAPI(settings.pixels_dir, *classify),
        GPTAPI(settings, spec=GPTSpec(settings, channel, drain), channel=channel),
        EmbeddingsAPI(settings, *embeddings),
    ]


def workers_per_device(settings: Settings, apis: list[ls.LitAPI]) -> dict[str, int]:
    """Worker processes per device for each API path (LitServe defaults a missing path to 1)."""
    counts = {"/v1/classify": settings.classify_workers}
    return {api.api_path: counts[api.api_path] for api in apis if api.api_path in counts}


def build_server(settings: Settings, drain: Drain | None = None) -> KeepsAPIServers:
    """The LitServer for all APIs, plus GET /metrics and the playground at GET /; nothing runs until `run()`.

    The channels' socket folder is made here; `serve()` removes it (`server.channel.remove()`).
    """
    drain = drain or Drain()
    # One GPT worker per device: the API servers spread new requests over them (see service/channel.py).
    channel = ChannelAddress.create(workers=devices_count(settings.accelerator))
    apis = build_apis(settings, channel, drain)
    server = KeepsAPIServers(
        apis,
        accelerator=settings.accelerator,
        workers_per_device=workers_per_device(settings, apis),
        timeout=settings.request_timeout,
        max_payload_size=settings.max_payload_size,  # an int: LitServe's string form fails every request
    )
    # How long uvicorn lets requests finish once LitServe stops it (its default is 30 s, longer than `docker stop`
    # waits before SIGKILL). On SIGTERM the Guard has already drained them for shutdown_grace_seconds; this is only
    # the last word for anything still open.
    server.uvicorn_graceful_timeout = min(1.0, settings.shutdown_grace_seconds)
    # Plain routes, not a mounted app (a mount answers /metrics with a 307); /metrics/ too, so that a scraper
    # configured either way gets the samples without a redirect.
    for path in ("/metrics", "/metrics/"):
        server.app.add_api_route(path, metrics.metrics_endpoint, methods=["GET"], include_in_schema=False)
    add_playground(server.app, settings.pixels_dir)  # GET / becomes the playground page
    # Attention, the embedding plane and the pixel network: served by the embeddings worker, not the decoding engine.
    embeddings = next(api for api in apis if isinstance(api, EmbeddingsAPI))
    assert isinstance(embeddings.spec, BatchSpec)
    add_inside_routes(server.app, settings, embeddings.spec.client)
    install_error_handlers(server.app)
    # LitServe's /health answers plain text; keep it out of the OpenAPI document, which would promise JSON.
    for route in server.app.routes:
        if getattr(route, "path", None) == "/health":
            route.include_in_schema = False  # type: ignore[attr-defined]
    server.app.add_middleware(Guard, settings=settings, drain=drain)
    watch_workers_ourselves(server)  # serve() watches every process itself (service/supervisor.py)
    for api in apis:
        address = api.spec.client.address if isinstance(api.spec, BatchSpec) else channel
        if worker_count(server, api.api_path) != address.workers:
            raise RuntimeError(f"LitServe starts a different number of {api.api_path} workers than its channel has")
    server.channel = channel  # type: ignore[attr-defined]
    if settings.cors_origins:  # closed unless origins are configured
        server.app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    # Added last, so outermost: it also counts the answers the Guard and CORS give without reaching a route.
    server.app.add_middleware(metrics.RequestMetrics, router=server.app.router)
    _record_info(settings, server)
    return server


def _record_info(settings: Settings, server: ls.LitServer) -> None:
    """The build and model info metrics, from what the workers will load: weights headers, device, dtype."""
    device = str(server.devices[0]).split(":")[0]  # "cuda:0" -> "cuda": one series per model, not per GPU
    gpt_dtype = str(pick_dtype(torch.device(device))).removeprefix("torch.")
    metrics.record_info(
        {
            settings.gpt_model_id: (settings.gpt_dir / "model.safetensors", gpt_dtype),
            settings.pixels_model_id: (settings.pixels_dir / "model.safetensors", "float32"),  # ClassifyAPI.batch
        },
        device,
    )


def _install_signal_handlers(server: ls.LitServer, drain: Drain, grace: float) -> None:
    """Make SIGTERM stop the server as Ctrl+C does (LitServe alone leaves its processes running on SIGTERM), and
    make both an orderly stop, never taken for a dead process."""
    main_pid = os.getpid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:
            # A forked API server that has not yet put uvicorn's own handler in place: just die.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # Once running, LitServe's main thread waits on this manager event and then shuts down in order
        # (HTTP servers drain, then workers stop). It is set from another thread because the main thread is
        # blocked inside a call on the same manager connection.
        event = shutdown_event(server)
        if event is None:
            raise KeyboardInterrupt  # still starting up: abort; serve() stops whatever was started

        def drain_then_stop() -> None:
            # New requests and /health get 503 at once; requests in flight get up to `grace` seconds to finish.
            drain.start()
            deadline = time.monotonic() + grace
            while drain.inflight.value > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            logger.info("drained (%d requests still in flight); stopping", drain.inflight.value)
            event.set()

        threading.Thread(target=drain_then_stop, name="sigterm-shutdown", daemon=True).start()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        # Ctrl+C reaches every process of the group at once: mark the stop as wanted first, so that the children
        # exiting now are not taken for deaths (service/supervisor.py), then let LitServe stop as it does.
        if os.getpid() == main_pid:
            drain.start()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)


def _stop_children(grace: float) -> None:
    """Terminate, then kill, any child still alive: a failed start-up skips LitServe's own cleanup."""
    children = mp.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(grace)
        if child.is_alive():
            child.kill()
            child.join(1.0)


def _configure_logging(level: str) -> None:
    """The service's own log lines to stderr at the server's level: LitServe configures only its own logger.

    The API servers are forked and inherit this; the spawned workers keep Python's default (warnings and errors).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    service_logger = logging.getLogger("service")
    service_logger.handlers[:] = [handler]
    service_logger.setLevel(logging.DEBUG if level == "trace" else level.upper())
    service_logger.propagate = False  # a library may have given the root logger a handler: one line each


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM or Ctrl+C; every process it started is gone on return."""
    _configure_logging(settings.log_level)
    metrics.clear_samples()
    drain = Drain()
    server = build_server(settings, drain)
    _install_signal_handlers(server, drain, settings.shutdown_grace_seconds)
    gone = functools.partial(announce_server_gone, server.channel)
    threading.Thread(target=supervisor.watch, args=(server, drain, gone), name="supervisor", daemon=True).start()
    try:
        server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.api_servers,
            log_level=settings.log_level,
            generate_client_file=False,
            loop=settings.http_loop,
            access_log=settings.access_log,
        )
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _stop_children(grace=5.0)
        metrics.remove_samples_dir()
        server.channel.remove()
    if drain.failed:
        raise SystemExit(1)  # so that the orchestrator (Docker, Kubernetes) starts a fresh server
