"""One server for every test that needs HTTP: `python -m service` in a subprocess, started once a session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0  # spawning workers imports torch in each: slow on a busy 2-core machine
STOP_TIMEOUT_S = 30.0


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> list[psutil.Process]:
        """SIGTERM the server; return the processes it had started that are still alive afterwards."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"server ignored SIGTERM for {STOP_TIMEOUT_S} s\n{self.log_text()[-3000:]}")
        _, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:  # do not leave them running whatever the test says
            child.kill()
        return alive


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_server(workdir: Path, *, own_group: bool = False, port: int | None = None, **settings: str) -> ServerProcess:
    """Start `python -m service` on loopback (`port`, else a free one), without waiting for it; `own_group`: in a
    process group of its own, so that a test can signal the whole group as a terminal's Ctrl+C does."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSERVE_")}
    env.update({f"TINYSERVE_{name.upper()}": value for name, value in settings.items()})
    env["TINYSERVE_HOST"] = "127.0.0.1"
    env["TINYSERVE_PORT"] = str(port)
    # Each server its own metrics directory: a second server would otherwise clear the first one's samples.
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_group,
        )
    return ServerProcess(url=f"http://127.0.0.1:{port}", process=process, log=log)


def start_server(workdir: Path, *, own_group: bool = False, port: int | None = None, **settings: str) -> ServerProcess:
    """Start `python -m service` on loopback (`port`, else a free one) and wait until /health answers 200."""
    return wait_healthy(launch_server(workdir, own_group=own_group, port=port, **settings))


def wait_healthy(server: ServerProcess) -> ServerProcess:
    """Wait until a launched server's /health answers 200; fail the test if it exits or takes too long."""
    process = server.process
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} during start-up\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    pytest.fail(f"server not healthy after {START_TIMEOUT_S} s\n{server.log_text()[-3000:]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Last (a stable sort), so that their servers do not compete with the shared one for the CPU while its tests run.
    items.sort(key=lambda item: item.get_closest_marker("own_server") is not None)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server. Classify batches wait up to 20 ms, so concurrent requests surely share a batch."""
    running = start_server(tmp_path_factory.mktemp("server"), classify_batch_timeout="0.02")
    yield running
    survivors = running.stop()
    assert not survivors, f"processes survived SIGTERM: {survivors}"


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.url
