"""The main process's life: configure logging, build the server, start the supervisor, run until SIGTERM or
Ctrl+C, then stop every process it started."""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import signal
import threading
import time
from types import FrameType

import litserve as ls

from service import metrics
from service.runtime import children, supervisor
from service.runtime.litserve_adapter import shut_down_manager, shutdown_event
from service.runtime.server import build_server
from service.runtime.state import ServerState
from service.settings import Settings

logger = logging.getLogger(__name__)


def _install_signal_handlers(server: ls.LitServer, state: ServerState, grace: float) -> None:
    """Make SIGTERM stop the server as Ctrl+C does (LitServe alone leaves its processes running on SIGTERM), and
    make both an orderly stop, never taken for a dead process. The children leave both to this process until it
    releases them (service/runtime/children.py), so a signal to the whole group acts as one to this process."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if state.stopping:
            return  # a stop is under way already (a second SIGTERM, Ctrl+C, a dead child)
        state.begin_stop()
        # Once running, LitServe's main thread waits on this manager event and then shuts down in order
        # (HTTP servers drain, then workers stop). It is set from another thread because the main thread is
        # blocked inside a call on the same manager connection.
        event = shutdown_event(server)
        if event is None:
            raise KeyboardInterrupt  # still starting up: abort; serve() stops whatever was started

        def drain_then_stop() -> None:
            # New requests and /health get 503 at once; requests in flight get up to `grace` seconds to finish.
            deadline = time.monotonic() + grace
            while state.inflight.value > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            logger.info("drained (%d requests still in flight); stopping", state.inflight.value)
            state.release_children()
            event.set()

        threading.Thread(target=drain_then_stop, name="sigterm-shutdown", daemon=True).start()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        # Ctrl+C stops at once: no drain. Stopping first, so that the children LitServe now stops are not taken for
        # deaths (runtime/supervisor.py).
        state.begin_stop()
        state.release_children()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)


def _stop_children(grace: float) -> None:
    """Terminate, then kill, any child still alive."""
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
    # Before anything records a metric (build_server records the info metrics): every process of the server writes
    # its samples to this folder, which the API servers (forked) and the workers (spawned) inherit.
    with metrics.multiprocess_folder():
        _serve(settings)


def _serve(settings: Settings) -> None:
    state = ServerState()
    built = build_server(settings, state)
    server = built.server
    _install_signal_handlers(server, state, settings.shutdown_grace_seconds)
    children.prepare_forked_children()
    gone = functools.partial(supervisor.announce_server_gone, built.channels.gpt)
    threading.Thread(target=supervisor.watch, args=(server, state, gone), name="supervisor", daemon=True).start()
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
        # A failed start-up skips LitServe's stop: ours stops what it had started.
        state.release_children()
        shut_down_manager(server)
        _stop_children(grace=5.0)
        built.remove_channels()
    if state.failed:
        raise SystemExit(1)  # so that the orchestrator (Docker, Kubernetes) starts a fresh server
