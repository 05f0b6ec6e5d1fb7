"""No dead process unnoticed: SIGKILL each kind of child process and the server says so, then exits 1.

Each test starts a server of its own (the death ends it), so they are few, and run after the shared server's tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess, start_server
from tests.helpers import stream_in_background

pytestmark = pytest.mark.own_server

# Noticed within 0.25 s, 1.5 s for the answers to go out, then LitServe's orderly stop of what is left.
EXIT_TIMEOUT_S = 30.0


def pids_by_role(server: ServerProcess) -> dict[str, int]:
    """Each child's pid by role ("API server 0", "/v1/classify worker 0", ...), from the supervisor's log line."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = re.search(r"processes: (.*)", server.log_text())
        if line:
            return {role.strip(): int(pid) for role, pid in re.findall(r"([^,]+) pid (\d+)", line.group(1))}
        time.sleep(0.1)
    pytest.fail(f"no 'processes:' line in the log\n{server.log_text()[-3000:]}")


def assert_unhealthy_then_exit_1(server: ServerProcess, children: list[psutil.Process]) -> None:
    """/health turns 503 within a second or so (or the server is already gone), then the server exits 1."""
    deadline = time.monotonic() + 5
    while True:
        try:
            health = httpx.get(f"{server.url}/health", timeout=5).status_code
        except httpx.TransportError:
            break  # already gone
        if health == 503:
            break
        assert time.monotonic() < deadline, f"/health still {health}"
        time.sleep(0.1)
    assert server.process.wait(EXIT_TIMEOUT_S) == 1
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


@pytest.mark.parametrize("role", ["/v1/completions worker 0", "/v1/classify worker 0", "/v1/embeddings worker 0"])
def test_a_killed_worker_fails_open_streams_with_503_and_the_server_exits_for_a_restart(tmp_path, role):
    server = start_server(tmp_path)
    pid = pids_by_role(server)[role]
    children = psutil.Process(server.process.pid).children(recursive=True)
    t, events = stream_in_background(server.url)
    os.kill(pid, signal.SIGKILL)
    t.join(30)
    assert not t.is_alive(), "the open stream hung"
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "worker_died"
    assert_unhealthy_then_exit_1(server, children)
    assert f"{role} (pid {pid}) died" in server.log_text()


def test_a_killed_api_server_frees_its_gpt_slots_and_the_server_exits_for_a_restart(tmp_path):
    server = start_server(tmp_path, api_servers="2")
    roles = pids_by_role(server)
    children = psutil.Process(server.process.pid).children(recursive=True)
    t, events = stream_in_background(server.url)
    port = int(server.url.rsplit(":", 1)[1])
    # The API server that accepted the stream holds its connection (both listen on the shared socket).
    holder = next(
        (role, pid)
        for role, pid in roles.items()
        if role.startswith("API server")
        for conn in psutil.Process(pid).net_connections("tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port
    )
    os.kill(holder[1], signal.SIGKILL)
    t.join(30)
    assert not t.is_alive() and events[-1] != "[DONE]"  # cut: its process is gone
    assert_unhealthy_then_exit_1(server, children)
    log = server.log_text()
    assert f"{holder[0]} (pid {holder[1]}) died" in log
    # 64 choices of 240 tokens, 32 at a time: at least the 32 still waiting were cancelled, not decoded for nobody.
    cancelled = re.search(rf"API server {holder[0].split()[-1]} is gone: cancelled its (\d+) open requests", log)
    assert cancelled and 32 <= int(cancelled.group(1)) <= 64, log[-3000:]
