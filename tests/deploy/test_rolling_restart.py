"""Two replicas behind HAProxy with the shipped deploy/haproxy/haproxy.cfg: affinity, and a rolling restart that loses
nothing (clients stream completions while each replica is stopped with SIGTERM and started again in turn)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.process import REPLICAS, Balancer, balanced
from tests.conftest import ServerProcess, launch_server, start_server, wait_healthy
from tests.helpers import sse_events

pytestmark = pytest.mark.own_server

API_SERVERS = "1"  # one HTTP server a replica: quicker to start, and the cores are few
CLIENTS = 6
MAX_TOKENS = 24


def counters(balancer: Balancer) -> dict[str, int]:
    """The backend's retries and redispatches so far."""
    (row,) = [r for r in balancer.stats() if (r["pxname"], r["svname"]) == ("replicas", "BACKEND")]
    return {"retries": int(row["wretr"] or 0), "redispatches": int(row["wredis"] or 0)}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replicas")


@pytest.fixture(scope="module")
def replicas(workdir: Path) -> Iterator[list[ServerProcess]]:
    """Two servers, started together; the rolling restart replaces them in the list. Stopped at the end."""
    started = [launch_server(workdir / f"{name}-0", api_servers=API_SERVERS) for name in REPLICAS]
    running = [wait_healthy(server) for server in started]
    yield running
    with ThreadPoolExecutor() as pool:  # both drains at once
        survivors = list(pool.map(ServerProcess.stop, [s for s in running if s.process.poll() is None]))
    assert not any(survivors), f"processes survived SIGTERM: {survivors}"


@pytest.fixture(scope="module")
def balancer(replicas: list[ServerProcess], workdir: Path) -> Iterator[Balancer]:
    """HAProxy on loopback with the shipped file (bench.process.balanced); only its addresses come from the
    environment."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (apt install haproxy; .ci/run installs it)")
    with balanced([server.url for server in replicas], workdir / "haproxy.log", binary) as running:
        yield running


def served_by(balancer: Balancer, headers: dict[str, str], body: dict[str, object] | None = None) -> str:
    """The replica that answered one short completion."""
    request = {"prompt": "KING.", "max_tokens": 1, **(body or {})}
    response = httpx.post(f"{balancer.url}/v1/completions", json=request, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["x-tinyserve-replica"]


def test_a_session_stays_on_one_replica(balancer: Balancer) -> None:
    for session in ("alpha", "beta", "gamma", "delta"):
        assert len({served_by(balancer, {"x-session-id": session}) for _ in range(4)}) == 1, session
    # The `user` field does the same when there is no header.
    assert len({served_by(balancer, {}, {"user": "someone"}) for _ in range(4)}) == 1
    # Sessions spread over both replicas, and so do requests with neither (round robin).
    assert {served_by(balancer, {"x-session-id": f"s{i}"}) for i in range(16)} == set(REPLICAS)
    assert {served_by(balancer, {}) for _ in range(4)} == set(REPLICAS)


@dataclass
class Stream:
    replica: str
    started: float
    ended: float


def test_a_rolling_restart_loses_no_request(
    balancer: Balancer, replicas: list[ServerProcess], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done: list[Stream] = []
    failures: list[str] = []
    streaming: dict[int, str] = {}  # client -> the replica its stream is on now
    stop = threading.Event()

    def client(index: int) -> None:
        # Half the clients hold a session (affinity), half not (round robin).
        headers = {"x-session-id": f"client-{index}"} if index % 2 else {}
        body = {"prompt": "ROMEO.\n", "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True}
        body["stream_options"] = {"include_usage": True}
        with httpx.Client(base_url=balancer.url, timeout=60) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    with http.stream("POST", "/v1/completions", json=body, headers=headers) as response:
                        replica = streaming[index] = response.headers.get("x-tinyserve-replica", "?")
                        events = list(sse_events(response.iter_lines()))
                except httpx.HTTPError as error:
                    failures.append(f"{type(error).__name__}: {error}")
                    continue
                finally:
                    streaming.pop(index, None)
                # Complete: a 200, every token, the usage chunk, then [DONE].
                usage = f'"completion_tokens":{MAX_TOKENS},'
                if response.status_code != 200 or len(events) < 2 or events[-1] != "[DONE]" or usage not in events[-2]:
                    failures.append(f"{response.status_code} from {replica}: {events[-3:]}")
                    continue
                done.append(Stream(replica, started, time.monotonic()))

    def streamed(name: str, after: float = 0.0) -> Callable[[], bool]:
        return lambda: any(s.replica == name and s.started > after for s in done)

    def streaming_on(name: str) -> Callable[[], bool]:
        return lambda: name in streaming.values()

    def up(name: str) -> Callable[[], bool]:
        return lambda: balancer.states()[name] == "UP"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    stopped_at: dict[str, float] = {}
    restarted_at: dict[str, float] = {}
    timings: list[str] = []
    try:
        for i, name in enumerate(REPLICAS):
            # SIGTERM while a stream is on the replica: the drain must let it finish.
            wait_for(streaming_on(name), f"a stream on {name}")
            stopped_at[name] = time.monotonic()
            assert not replicas[i].stop(), "processes survived SIGTERM"
            stop_s = time.monotonic() - stopped_at[name]
            port = int(replicas[i].url.rsplit(":", 1)[1])
            replicas[i] = start_server(workdir / f"{name}-1", port=port, api_servers=API_SERVERS)
            wait_for(up(name), f"{name} UP again in HAProxy")
            restarted_at[name] = time.monotonic()
            timings.append(f"{name} stopped in {stop_s:.1f} s, UP after {restarted_at[name] - stopped_at[name]:.1f} s")
        # The last one restarted serves again before the clients stop.
        wait_for(streamed(REPLICAS[-1], restarted_at[REPLICAS[-1]]), "streaming through the restarted replica")
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
    counts = counters(balancer)
    with capsys.disabled():
        print(f"\nrolling restart: {len(done)} streams, {len(failures)} failed, {counts}; " + "; ".join(timings))
    assert not failures, failures[:10]
    for name in REPLICAS:
        # A stream was in flight on the replica when it got SIGTERM, and the drain let it finish.
        assert any(s.replica == name and s.started < stopped_at[name] < s.ended for s in done), name
        # Once up again, the replica serves again.
        assert streamed(name, restarted_at[name])(), name
    # Requests did reach a stopping replica and were sent again: the test exercises the retry, not luck.
    assert counts["retries"] + counts["redispatches"] > 0
