"""Server subprocesses for the benchmarks: a free loopback port, a server healthy inside a block, SIGTERM after."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240.0  # spawning workers imports torch in each: slow on a busy 2-core machine


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
