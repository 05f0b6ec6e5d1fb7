"""Every use of LitServe's private parts, in one place: read from litserve 0.2.19 (pinned <0.3 in pyproject.toml).

Each helper names what it reaches into; when LitServe changes, this module is what to re-read. (The response queue
id LitServe writes onto a spec before forking each API server is a public attribute: see service/gpt_spec.py.)
"""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.process import BaseProcess
from typing import Any

import litserve as ls
from litserve.connector import _Connector
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

SENTINEL = _SENTINEL_VALUE  # what LitServe puts on a worker's request queue to stop it
StopLoop = _StopLoopError  # raised inside a loop to end the worker


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
    """The manager event LitServe's main thread waits on once running (`_shutdown_event`); None while starting."""
    return getattr(server, "_shutdown_event", None)


def inference_workers(server: ls.LitServer) -> list[mp.Process]:
    """The worker processes LitServe has started (`inference_workers`, set in `run`)."""
    return list(getattr(server, "inference_workers", []))


class GuardedAPI(ls.LitAPI):
    """A LitAPI whose routes LitServe does not authorize: the Guard does (service/guards.py, the API key)."""

    async def authorize(self) -> None:
        # LitServe adds `Depends(setup_auth(api))` to every route; without this hook that is its `no_auth`, a sync
        # no-op that FastAPI runs in a thread-pool thread on every request; this async one is awaited in place
        # (measured on the classifier: README, Benchmark).
        return None


class KeepsAPIServers(ls.LitServer):
    """A LitServer that keeps the API-server processes it forks (`_start_server` returns them to `run`, which
    keeps them in a local variable only), so that the main process can watch them."""

    api_servers: list[BaseProcess]  # index = the server's response queue id; empty until they are forked

    def _start_server(self, *args: Any, **kwargs: Any) -> dict[int, Any]:
        servers: dict[int, Any] = super()._start_server(*args, **kwargs)
        # Threads, when LitServe is told to run its API servers as threads, die with the main process anyway.
        self.api_servers = [servers[i] for i in sorted(servers) if isinstance(servers[i], BaseProcess)]
        return servers
