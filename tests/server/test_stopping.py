"""Every way the server can be stopped ends cleanly: Ctrl+C or SIGTERM to its whole process group (what a terminal
and a process manager send), and a SIGKILL of the main process, after which every child exits by itself.

Each test starts a server of its own (the stop ends it), so they run after the shared server's tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess, launch_server, start_server
from tests.helpers import stream_in_background

pytestmark = pytest.mark.own_server

EXIT_TIMEOUT_S = 30.0
# Every child polls for its parent four times a second (gone within ~0.3 s idle); 5 s leaves room for a busy CI.
ORPHAN_TIMEOUT_S = 5.0


def running(process: psutil.Process) -> bool:
    """Still running; a zombie counts as gone (once orphaned, its reaper may be slow to collect it), but only once its
    other threads have exited too: a leader shows as a zombie while they still tear down and hold its sockets."""
    try:
        if not process.is_running():
            return False
        return process.status() != psutil.STATUS_ZOMBIE or process.num_threads() > 1
    except psutil.NoSuchProcess:
        return False


def listening_on(port: int, timeout: float) -> list[int | None]:
    """The pids (None where no process shows the socket) still listening on `port` after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == "LISTEN"
        ]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def still_running(processes: list[psutil.Process], timeout: float) -> list[str]:
    """Those of `processes` still running after up to `timeout` seconds, by pid and command line."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in processes if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    found = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            found.append(f"{process.pid} {' '.join(process.cmdline())}")
            process.kill()  # do not leave them running whatever the test says
    return found


def children_of(server: ServerProcess) -> list[psutil.Process]:
    """The main process's children: the API servers, the workers, LitServe's manager, Python's resource tracker."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert children
    return children


def assert_clean_log(server: ServerProcess) -> None:
    log = server.log_text()
    for noise in ("Traceback", "Task was destroyed", "leaked", "Forcibly killing"):
        assert noise not in log, log[-4000:]


def test_sigterm_to_the_whole_group_drains_then_exits_cleanly(tmp_path):
    server = start_server(tmp_path, own_group=True, shutdown_grace_seconds="60")
    children = children_of(server)
    t, events = stream_in_background(server.url)
    os.killpg(server.process.pid, signal.SIGTERM)
    time.sleep(0.3)
    # The children heard it too, and leave it to the main process: it drains as when it alone is told.
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 503
    t.join(120)
    assert events[-1] == "[DONE]" and len(events) > 10  # the stream finished whole
    assert server.process.wait(EXIT_TIMEOUT_S) == 0
    assert not still_running(children, 5)
    assert_clean_log(server)


def test_ctrl_c_to_the_whole_group_stops_at_once_and_cleanly(tmp_path):
    server = start_server(tmp_path, own_group=True)
    children = children_of(server)
    t, events = stream_in_background(server.url)
    os.killpg(server.process.pid, signal.SIGINT)
    assert server.process.wait(EXIT_TIMEOUT_S) == 0
    t.join(30)
    assert not t.is_alive(), "the open stream hung"
    assert not still_running(children, 5)
    assert_clean_log(server)


def test_a_killed_main_process_leaves_no_child_and_frees_the_port(tmp_path):
    server = start_server(tmp_path)
    children = children_of(server)
    server.process.kill()
    server.process.wait()
    assert not still_running(children, ORPHAN_TIMEOUT_S)
    # Nothing listens on the port any more, so a new server can take it. (A plain bind may still fail for a while:
    # the killed server's half-closed connections linger in FIN_WAIT2 until the kernel drops them, orphans or not.)
    port = int(server.url.rsplit(":", 1)[1])
    listening = listening_on(port, ORPHAN_TIMEOUT_S)
    assert not listening, f"still listening on {port}: {listening}"
    assert_clean_log(server)


def spawned_workers(server: ServerProcess) -> int:
    """How many model workers the main process has spawned so far."""
    count = 0
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.Error):
            count += "spawn_main" in " ".join(child.cmdline())
    return count


def test_a_main_process_killed_during_start_up_leaves_no_worker(tmp_path):
    server = launch_server(tmp_path)
    deadline = time.monotonic() + 60
    while spawned_workers(server) < 3:  # the classifier, the GPT, the embeddings
        assert server.process.poll() is None and time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)  # into their imports or their model loading: before any request could be served
    children = children_of(server)
    server.process.kill()
    server.process.wait()
    # A worker still importing notices once its first code of ours runs: seconds, not never.
    assert not still_running(children, EXIT_TIMEOUT_S)
    assert_clean_log(server)
