"""Classifier throughput and latency: LitServe (tinyserve) against a bare FastAPI + uvicorn app, one run.

    python -m bench.classify            # bare FastAPI; tinyserve unbatched and at its defaults
    python -m bench.classify --sweep    # also the other tinyserve variants (batch size, queue delay, processes)

Servers take turns, one at a time (so that no idle server takes CPU from the measured one), for several rounds
in a rotating order; req/s is the median over rounds, latencies are pooled. Starting each server takes a few
seconds per round.

Every server is a subprocess on 127.0.0.1 with the same model and the same request/response models; the
load comes from a small raw-socket HTTP/1.1 keep-alive client (httpx would cost more CPU per request than
the bare server does). Each level is bounded by a request count and a time limit. A report, never a test:
figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from bench.process import HOST, Launched, free_port, launched

# At module level: FastAPI resolves the handler's (string) annotations in this module's globals.
from service.schemas import ClassifyRequest, ClassifyResponse

PLUS = [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]

# tinyserve variants as TINYSERVE_* settings (classify_batch_timeout is the batcher's max queue delay).
VARIANTS: dict[str, dict[str, str]] = {
    "no-batching": {"classify_max_batch_size": "1"},
    "no-batching-2api": {"classify_max_batch_size": "1", "api_servers": "2"},
    "batch8-1ms": {"classify_max_batch_size": "8", "classify_batch_timeout": "0.001"},
    "batch16-0.5ms": {"classify_max_batch_size": "16", "classify_batch_timeout": "0.0005"},
    "batch32-1ms-2workers": {
        "classify_max_batch_size": "32",
        "classify_batch_timeout": "0.001",
        "classify_workers": "2",
    },
    "batch32-1ms": {"classify_max_batch_size": "32", "classify_batch_timeout": "0.001"},
    "batch64-5ms": {"classify_max_batch_size": "64", "classify_batch_timeout": "0.005"},
    "batch32-1ms-2api": {
        "classify_max_batch_size": "32",
        "classify_batch_timeout": "0.001",
        "api_servers": "2",
    },
    "batch32-1ms-asyncio": {
        "classify_max_batch_size": "32",
        "classify_batch_timeout": "0.001",
        "http_loop": "asyncio",
    },
    "batch4-0ms": {"classify_max_batch_size": "4"},
    "defaults": {},  # tinyserve's Settings defaults: batches of up to 32, no queue delay
}
DEFAULT_RUN = ["no-batching", "defaults"]


@dataclass
class Level:
    """One server at one concurrency, over one or more rounds."""

    server: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    round_rps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        if self.round_rps:
            return statistics.median(self.round_rps)
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def add_round(self, other: Level) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.seconds += other.seconds
        self.round_rps.append(other.rps)

    def percentile(self, q: float) -> float:
        """Latency in ms at quantile q (0..1)."""
        if len(self.latencies) < 2:
            return 1000 * self.latencies[0] if self.latencies else float("nan")
        return 1000 * statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q * 100) - 1]


def litserve_server(variant: str, port: int, log: Path) -> AbstractContextManager[Launched]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSERVE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each server makes and removes its own
    env.update({f"TINYSERVE_{k.upper()}": v for k, v in VARIANTS[variant].items()})
    env.update({"TINYSERVE_PORT": str(port), "TINYSERVE_LOG_LEVEL": "warning"})
    return launched([sys.executable, "-m", "service"], port, env, log)


def bare_server(port: int, log: Path) -> AbstractContextManager[Launched]:
    return launched([sys.executable, "-m", "bench.classify", "--serve-bare", str(port)], port, dict(os.environ), log)


def serve_bare(port: int) -> None:
    """The baseline: the same model and schemas in a plain FastAPI app, predicting in the handler."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from model.pixels import load_pixels
    from service.settings import Settings

    torch.set_num_threads(1)
    model = load_pixels(Settings().pixels_dir)
    symbols = model.config.symbols
    app = FastAPI()

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        probs = model.predict(torch.tensor([request.flat()]))[0].tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return ClassifyResponse(symbol=symbols[best], probabilities=dict(zip(symbols, probs, strict=True)))

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


async def _connection(port: int, request: bytes, level: Level, budget: list[int], deadline: float) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    checked = False
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            level.latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                level.errors += 1
            elif not checked:  # one answer per connection is read in full: the right symbol, not just a 200
                checked = True
                if json.loads(body)["symbol"] != "plus":
                    level.errors += 1
    finally:
        writer.close()


async def _load(port: int, level: Level, max_requests: int, seconds: float) -> None:
    body = json.dumps({"pixels": PLUS}).encode()
    request = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    budget = [max_requests]
    start = time.perf_counter()
    await asyncio.gather(
        *(_connection(port, request, level, budget, start + seconds) for _ in range(level.concurrency))
    )
    level.seconds = time.perf_counter() - start


def measure(name: str, port: int, concurrency: int, max_requests: int, seconds: float) -> Level:
    asyncio.run(_load(port, Level(name, concurrency), max(50, max_requests // 20), min(0.5, seconds)))  # warm-up
    level = Level(name, concurrency)
    asyncio.run(_load(port, level, max_requests, seconds))
    return level


def batch_sizes(port: int) -> str:
    """The classify batch-size histogram of a tinyserve server's life so far, from its /metrics: batches per size
    bucket (not cumulative) and the mean batch size."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    cumulative: list[tuple[str, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("tinyserve_classify_batch_size_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            cumulative.append((bound, float(line.rsplit(" ", 1)[1])))
        elif line.startswith("tinyserve_classify_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tinyserve_classify_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
    cumulative.sort(key=lambda b: float(b[0]))  # "+Inf" sorts last
    below, parts = 0.0, []
    for bound, n in cumulative:
        if n > below:
            parts.append(f"<={bound}: {n - below:,.0f}")
        below = n
    mean = total / count if count else float("nan")
    return f"{count:,.0f} batches, mean size {mean:.1f}; " + ", ".join(parts)


def print_table(levels: list[Level]) -> None:
    bare = {lv.concurrency: lv.rps for lv in levels if lv.server == "bare-fastapi"}
    print("\n| server | concurrency | requests | req/s | p50 ms | p99 ms | errors | vs bare |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for lv in levels:
        ratio = lv.rps / bare[lv.concurrency] if bare.get(lv.concurrency) else float("nan")
        print(
            f"| {lv.server} | {lv.concurrency} | {len(lv.latencies)} | {lv.rps:,.0f}"
            f" | {lv.percentile(0.5):.2f} | {lv.percentile(0.99):.2f} | {lv.errors} | {ratio:.0%} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="time limit per level and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server takes")
    parser.add_argument("--max-requests", type=int, default=20_000, help="request limit per level")
    parser.add_argument("--sweep", action="store_true", help="run every tinyserve variant, not just the default two")
    parser.add_argument("--variants", help=f"comma-separated tinyserve variants, from: {', '.join(VARIANTS)}")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    variants = list(VARIANTS) if args.sweep else (args.variants.split(",") if args.variants else DEFAULT_RUN)
    logs = Path(tempfile.mkdtemp(prefix="tinyserve-bench-"))
    print(f"{os.cpu_count()} CPUs, load averages {os.getloadavg()}; logs in {logs}", flush=True)

    names = ["bare-fastapi", *variants]
    levels = {(name, c): Level(name, c) for name in names for c in concurrencies}
    for turn in range(args.rounds):
        order = names[turn % len(names) :] + names[: turn % len(names)]  # nobody always goes first
        for name in order:
            port = free_port()
            server = (
                bare_server(port, logs / "bare.log")
                if name == "bare-fastapi"
                else litserve_server(name, port, logs / f"{name}.log")
            )
            with server:
                for concurrency in concurrencies:
                    level = measure(name, port, concurrency, args.max_requests, args.seconds)
                    levels[name, concurrency].add_round(level)
                    print(f"round {turn + 1} {name:>20} c={concurrency:<3} {level.rps:7,.0f} req/s")
                if name != "bare-fastapi":
                    print(f"round {turn + 1} {name:>20} batch sizes over its levels: {batch_sizes(port)}")
    print_table(list(levels.values()))


if __name__ == "__main__":
    main()
