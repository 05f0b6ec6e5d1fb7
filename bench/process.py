"""Server subprocesses for the benchmarks: a free loopback port, a server healthy inside a block, SIGTERM after;
HAProxy with the shipped configuration in front of replicas (tests/deploy/test_rolling_restart.py uses it too)."""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240.0  # spawning workers imports torch in each: slow on a busy 2-core machine
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
REPLICAS = ("replica-1", "replica-2")  # the server names in the cfg, in its order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Launched:
    url: str
    proc: subprocess.Popen[bytes]


@contextmanager
def launched(argv: list[str], port: int, env: dict[str, str], log: Path, cwd: Path = REPO) -> Iterator[Launched]:
    """Run `argv` in `cwd` with exactly `env` (output to `log`) until GET /health on `port` answers 200; SIGTERM it
    (then SIGKILL) when the block ends. A server that exits or stays unhealthy raises with the end of its log."""
    with log.open("wb") as out:
        # A server makes its own metrics folder: one named by the caller would be emptied by every server started.
        env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} while starting: {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {START_TIMEOUT_S:.0f} s: {_tail(log)}")
            time.sleep(0.25)
        yield Launched(f"http://{HOST}:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Balancer:
    url: str  # where clients connect
    stats_url: str  # HAProxy's /stats page and its /metrics
    proc: subprocess.Popen[bytes]

    def stats(self) -> list[dict[str, str]]:
        """HAProxy's stats, a row a proxy and server (`pxname`, `svname`, `status`, ...)."""
        with urllib.request.urlopen(f"{self.stats_url}/stats;csv", timeout=5) as response:
            text = response.read().decode().removeprefix("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def states(self) -> dict[str, str]:
        """Each replica's state as HAProxy's health checks see it: UP, DOWN, or on its way ("UP 1/2", ...)."""
        return {r["svname"]: r["status"] for r in self.stats() if r["pxname"] == "replicas" and r["svname"] in REPLICAS}


@contextmanager
def balanced(replicas: list[str], log: Path, binary: str = "haproxy", timeout_s: float = 30) -> Iterator[Balancer]:
    """HAProxy on loopback with the shipped deploy/haproxy/haproxy.cfg in front of `replicas` (their URLs, at most
    two), only its addresses from the environment, until every replica is UP in it; stopped when the block ends."""
    port, stats_port = free_port(), free_port()
    env = dict(os.environ, HAPROXY_BIND=f"{HOST}:{port}", HAPROXY_STATS_BIND=f"{HOST}:{stats_port}")
    env.update({f"REPLICA_{i + 1}": url.removeprefix("http://") for i, url in enumerate(replicas)})
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=out, stderr=subprocess.STDOUT)
    balancer = Balancer(f"http://{HOST}:{port}", f"http://{HOST}:{stats_port}", proc)
    try:
        deadline = time.monotonic() + timeout_s
        while not _all_up(balancer, len(replicas)):
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {proc.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every replica UP in haproxy after {timeout_s:.0f} s: {_tail(log)}")
            time.sleep(0.1)
        yield balancer
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _all_up(balancer: Balancer, count: int) -> bool:
    try:
        states = list(balancer.states().values())
    except OSError:  # not listening yet
        return False
    return states.count("UP") == count


def _healthy(port: int) -> bool:
    # A raw request: no HTTP client library in the process that measures (bench.classify drives raw sockets too).
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _tail(log: Path, chars: int = 600) -> str:
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    return " ".join(text[-chars:].split())
