"""State the main process shares with the API servers it forks: made before the fork, read by every copy."""

from __future__ import annotations

import multiprocessing as mp
from ctypes import c_byte

# Paths whose requests in flight are bounded (by settings), counted across all API-server processes.
LIMITED_PATHS = ("/v1/completions", "/v1/embeddings", "/v1/classify", "/v1/attention", "/v1/embeddings/map")


class ServerState:
    """The whole server's state, in shared memory: stopping (draining), children released, a child died, requests in
    flight in all API servers, and the in-flight count of each limited path. Made before the fork, so every process
    sees the same."""

    def __init__(self) -> None:
        self.draining = mp.Value("b", 0)
        # Lock-free, so that it can be handed to the spawned workers too (service/runtime/children.py).
        self.released: c_byte = mp.RawValue(c_byte, 0)
        self.child_died = mp.Value("b", 0)
        self.inflight = mp.Value("i", 0)
        self.per_path = {path: mp.Value("i", 0) for path in LIMITED_PATHS}

    def begin_stop(self) -> None:
        """Stopping: new requests and /health answer 503; those in flight may finish."""
        self.draining.value = 1

    def release_children(self) -> None:
        """The main process stops its children now: from here on each obeys the SIGTERM that LitServe sends it."""
        self.released.value = 1

    @property
    def stopping(self) -> bool:
        return bool(self.draining.value)

    @property
    def failed(self) -> bool:
        """A child process died: the server is stopping to be restarted."""
        return bool(self.child_died.value)

    def add(self, n: int) -> None:
        with self.inflight.get_lock():
            self.inflight.value += n
