"""No dead process unnoticed: the main process watches every process LitServe started for it.

The policy, one for every child (an API server, any inference worker): when one dies (OOM killer, SIGKILL, a crash),
the server stops whole and exits 1, so that the orchestrator (Docker's restart policy, Kubernetes) starts a fresh
one. Restarting a single child in place was not chosen: an API server is a fork of the main process taken before
anything ran, and a worker holds requests nobody else can answer; a fresh server is the one state known to be good.

Until it stops: /health and new requests answer 503 at once (service/api/guard.py), open requests end with a 503
`worker_died` (transport/client.py), and the GPT sequences of a dead API server are cancelled in the engine, not
decoded to the end for nobody (`announce_server_gone`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from service.runtime.litserve_adapter import KeepsAPIServers, api_paths, inference_workers, shutdown_event, worker_count
from service.runtime.state import ServerState
from service.transport.channel import ChannelAddress, broadcast
from service.transport.messages import ServerGone

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# Between noticing a death and stopping: time for the 503s and error chunks to reach the clients.
ANSWER_SECONDS = 1.5


@dataclass(frozen=True)
class Child:
    role: str  # "API server 0", "/v1/classify worker 0": what the log says
    process: BaseProcess
    server_index: int | None = None  # an API server's response queue id


def children(server: KeepsAPIServers) -> list[Child]:
    """Every process the server runs, named; empty until the API servers have started."""
    api_servers = getattr(server, "api_servers", [])
    if not api_servers:
        return []
    found = [Child(f"API server {i}", p, i) for i, p in enumerate(api_servers)]
    workers = iter(inference_workers(server))
    # LitServe starts the workers API by API, in the connector's order: that order names them.
    for path in api_paths(server):
        for n in range(worker_count(server, path)):
            found.append(Child(f"{path} worker {n}", next(workers)))
    return found


def announce_server_gone(address: ChannelAddress, server_index: int) -> None:
    """Tell every GPT worker that API server `server_index` died: it cancels every request that server sent."""
    broadcast(address, ServerGone(server_index))


def watch(server: KeepsAPIServers, state: ServerState, on_api_server_gone: Callable[[int], None]) -> None:
    """Run in a thread of the main process: on a child's death, fail open requests, then stop the server."""
    announced = False
    while True:
        time.sleep(POLL_SECONDS)
        if state.stopping:
            return  # an orderly shutdown stops the children on purpose
        event = shutdown_event(server)
        running = children(server)
        if event is None or not running:
            continue
        if not announced:  # one line saying which pid is what: for operators, and for the tests that kill them
            logger.info("processes: %s", ", ".join(f"{c.role} pid {c.process.pid}" for c in running))
            announced = True
        dead = next((c for c in running if c.process.exitcode is not None), None)
        if dead is None:
            continue
        logger.error(
            "%s (pid %s) died with exit code %s; failing open requests and stopping the server",
            dead.role,
            dead.process.pid,
            dead.process.exitcode,
        )
        state.child_died.value = 1
        if dead.server_index is not None:
            on_api_server_gone(dead.server_index)
        time.sleep(ANSWER_SECONDS)
        state.begin_stop()
        state.release_children()
        event.set()
        return
