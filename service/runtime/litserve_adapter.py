"""Every place LitServe is used beyond its public API, in one module: read from litserve 0.2.19 (pinned <0.3).

What we keep of LitServe: it spawns the model workers, forks the API servers and reports /health. What we replace
(measured in docs/architecture.md): its queues (by our channel), its loops (by each worker's own threads) and its
per-API routes (by ours). Each helper names what it reaches into; when LitServe changes, re-read this module.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
from ctypes import c_byte
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from queue import Queue
from types import FrameType
from typing import Any

import litserve as ls
import litserve.server
from fastapi import FastAPI
from fastapi.routing import APIRoute
from litserve.callbacks import CallbackRunner
from litserve.connector import _Connector
from litserve.loops.base import LitLoop
from litserve.specs.base import LitSpec
from litserve.transport.base import MessageTransport
from tqdm import tqdm

from service.runtime.children import STOP_SIGNALS, exit_with_parent, leave_stop_signals_to_main

logger = logging.getLogger(__name__)


def devices_count(accelerator: str) -> int:
    """How many devices LitServe will put workers on (`_Connector`, as `LitServer.__init__` resolves them): a GPT
    worker per device, known before the server is built so that the GPT channel is made for that many."""
    connector = _Connector(accelerator=accelerator)
    if connector.accelerator == "cpu":
        return 1
    devices = connector.devices
    return devices if isinstance(devices, int) else len(devices)


def worker_count(server: ls.LitServer, api_path: str) -> int:
    """Workers LitServe will start for `api_path` (`_inference_workers_config_for_api`)."""
    return len(server._inference_workers_config_for_api(api_path))


def api_paths(server: ls.LitServer) -> list[str]:
    """Every API's path, in the order LitServe starts their workers (`litapi_connector`, iterated by `run`)."""
    return [api.api_path for api in server.litapi_connector]


def worker_index() -> int:
    """This worker's number among its API's workers: LitServe sets it in the environment before `setup`."""
    return int(os.environ.get("LITSERVE_WORKER_ID", "0"))


def watch_workers_ourselves(server: ls.LitServer) -> None:
    """Turn off LitServe's worker monitor (`_monitor_workers`): it would cut open streams without a word."""
    server._monitor_workers = False


def shutdown_event(server: ls.LitServer) -> Any | None:
    """The manager event LitServe's main thread waits on once running (`_shutdown_event`); None until the API servers
    are up: LitServe makes it at the start of `run`, but waits on it only after the workers' setup."""
    if not getattr(server, "api_servers", None):
        return None
    return getattr(server, "_shutdown_event", None)


def shut_down_manager(server: ls.LitServer) -> None:
    """Stop LitServe's manager process (`_init_manager` keeps it as `transport_config.manager`) unless already
    stopped: it ignores SIGTERM (service/runtime/children.py)."""
    manager = getattr(server.transport_config, "manager", None)
    if manager is not None:
        manager.shutdown()  # once only: a second call does nothing


def inference_workers(server: ls.LitServer) -> list[mp.Process]:
    """The worker processes LitServe has started (`inference_workers`, set in `run`)."""
    return list(getattr(server, "inference_workers", []))


def api_server_index() -> int:
    """This API server's index (0 .. api_servers-1): LitServe names each forked server process `LitServer-<index>`
    (`_start_server`); 0 in a process it did not fork (tests)."""
    name = mp.current_process().name
    return int(name.removeprefix("LitServer-")) if name.startswith("LitServer-") else 0


def take_root_route(app: FastAPI) -> None:
    """Remove LitServe's own GET / ("litserve running", added in `LitServer.__init__`), so that ours is reachable."""
    app.router.routes[:] = [
        route
        for route in app.router.routes
        if not (isinstance(route, APIRoute) and route.path == "/" and "GET" in (route.methods or ()))
    ]


def hide_health_from_schema(app: FastAPI) -> None:
    """LitServe's /health answers plain text: keep it out of the OpenAPI document, which would promise JSON."""
    for route in app.routes:
        if getattr(route, "path", None) == "/health":
            route.include_in_schema = False  # type: ignore[attr-defined]


class _NoRoutes(LitSpec):
    """A spec that adds no route: LitServe adds its own POST route for an API without a spec, and ours are made by
    service/api/app.py, apart from the worker (which LitServe pickles, spec included, into its process)."""

    def __init__(self, api_path: str) -> None:
        super().__init__()
        self.api_path = api_path  # LitAPI.api_path reads its spec's

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output


class _OwnThreadsLoop(LitLoop):
    """Runs a worker's own threads in place of LitServe's loops (why: docs/architecture.md)."""

    def __init__(self) -> None:
        super().__init__()
        self._threads: list[threading.Thread] = []

    async def schedule_task(
        self, lit_api: ls.LitAPI, lit_spec: LitSpec | None, request_queue: Queue, transport: MessageTransport
    ) -> None:
        assert isinstance(lit_api, ModelWorker)
        self._threads = lit_api.threads()
        for t in self._threads:
            t.start()
        # LitServe's request queue for this path stays empty (requests come over our channel): stay scheduled.
        await asyncio.Event().wait()

    async def run(
        self,
        lit_api: ls.LitAPI,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: MessageTransport,
        workers_setup_status: dict[int, str],
        callback_runner: CallbackRunner,
    ) -> None:
        # Never returns: LitServe's wrapper would then ask the API for `has_active_requests`. The threads catch what
        # they can survive, so a dead one is a bug: end the process, and the supervisor stops the server for a
        # restart. (A dead main process is watched for from before setup: `_WorkerStart`.)
        while True:
            await asyncio.sleep(0.5)
            if self._threads and not all(t.is_alive() for t in self._threads):
                logger.critical("a worker thread of %s died; stopping the worker", lit_api.api_path)
                os._exit(1)


class ModelWorker(ls.LitAPI):
    """A model worker process: LitServe spawns it and calls `setup(device)`; then `threads()` serve our channel."""

    def __init__(self, api_path: str, max_batch_size: int) -> None:
        super().__init__(
            max_batch_size=max_batch_size, api_path=api_path, spec=_NoRoutes(api_path), loop=_OwnThreadsLoop()
        )

    def threads(self) -> list[threading.Thread]:
        """The worker's threads, made once `setup` has run (in the worker process)."""
        raise NotImplementedError


class _WorkerStart(ls.Callback):
    """In each spawned worker, before its model loads: stop signals left to the main process, and an exit with it
    (service/runtime/children.py). LitServe pickles its callbacks into the worker, the flag with them."""

    def __init__(self, released: c_byte) -> None:
        self.released = released

    def on_before_setup(self, *args: Any, **kwargs: Any) -> None:
        # transformers' progress bars would take a process-shared lock: a named semaphore, which an exit on SIGTERM
        # leaves to Python's resource tracker to remove, with a warning. One process needs no more than a thread lock.
        tqdm.set_lock(threading.RLock())
        leave_stop_signals_to_main(self.released)
        # Blocked since the spawn (`KeepsAPIServers.launch_inference_worker`): one that came meanwhile is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        parent = mp.parent_process()
        exit_with_parent(parent.pid if parent and parent.pid else os.getppid())


class _APIServer(litserve.server._Server):
    """LitServe's uvicorn server, deaf to SIGINT and SIGTERM until the main process releases its children: a signal
    to the whole group must not stop it before the main process has drained (service/runtime/children.py)."""

    def __init__(self, released: c_byte, config: Any) -> None:
        super().__init__(config=config)
        self.released = released

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.released.value:
            super().handle_exit(sig, frame)
            # Requests in flight have had their drain (SIGTERM) or get none (Ctrl+C): uvicorn's own wait for them
            # would outlast the time LitServe gives it before a SIGKILL.
            self.force_exit = True

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super().serve(sockets)
        # Shut down: exit now. Returning would wait out LitServe's response reader (`MPQueueTransport.areceive`,
        # blocked up to 1 s in a thread), past the 1 s LitServe waits before a SIGKILL and a warning.
        if threading.current_thread() is threading.main_thread():  # a process of its own, not LitServe's thread mode
            os._exit(0 if self.started else 3)  # 3: uvicorn's exit code for a failed start-up


class KeepsAPIServers(ls.LitServer):
    """A LitServer that keeps the API-server processes it forks (`_start_server` returns them to `run`, which keeps
    them in a local variable only) for the main process to watch, and whose children leave it SIGINT and SIGTERM."""

    api_servers: list[BaseProcess]  # by API-server index; empty until they are forked

    def __init__(self, *args: Any, released: c_byte, **kwargs: Any) -> None:
        super().__init__(*args, callbacks=[_WorkerStart(released)], **kwargs)
        self.released = released

    def launch_inference_worker(self, lit_api: ls.LitAPI) -> list[mp.Process]:
        # The spawned worker inherits the blocked signals: a Ctrl+C during its imports waits for `_WorkerStart`.
        # Python's resource tracker, started by the first spawn, unblocks them as it starts: start it before.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            workers: list[mp.Process] = super().launch_inference_worker(lit_api)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return workers

    def _start_server(self, *args: Any, **kwargs: Any) -> dict[int, Any]:
        # litserve 0.2.19 makes each API server from the module's `_Server` inside `_start_server`: make it ours.
        plain = litserve.server._Server
        litserve.server._Server = functools.partial(_APIServer, self.released)  # type: ignore[misc]
        try:
            servers: dict[int, Any] = super()._start_server(*args, **kwargs)
        finally:
            litserve.server._Server = plain  # type: ignore[misc]
        # Threads, when LitServe is told to run its API servers as threads, die with the main process anyway.
        self.api_servers = [servers[i] for i in sorted(servers) if isinstance(servers[i], BaseProcess)]
        return servers
