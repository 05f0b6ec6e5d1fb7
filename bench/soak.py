"""`make soak`: minutes of mixed traffic below capacity against a fresh server, then what it did to the server.

Streamed and plain completions, classify requests, and a few clients that hang up mid-stream, from a fixed number of
loopback clients. Reports requests served, failures by kind, p99 latency per minute, and the RSS of every server
process at the start and the end. A report, never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import defaultdict

import httpx
import numpy as np
import psutil

from bench.serve import serving


def rss_by_process(pid: int) -> dict[str, int]:
    root = psutil.Process(pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(p.cmdline())[-60:]
            out[f"{p.pid} {name}"] = p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


async def soak(url: str, minutes: float, clients: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    t0 = time.monotonic()
    end = t0 + minutes * 60
    served = 0
    failures: defaultdict[str, int] = defaultdict(int)
    latencies: defaultdict[int, list[float]] = defaultdict(list)  # minute -> seconds

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal served
        kind = rng.choices(["stream", "plain", "classify", "drop"], weights=[4, 2, 3, 1])[0]
        start = time.monotonic()
        try:
            if kind == "classify":
                r = await client.post(f"{url}/v1/classify", json={"pixels": [rng.uniform(-1, 1) for _ in range(9)]})
                ok = r.status_code == 200
                code = f"http_{r.status_code}"
            elif kind == "plain":
                body = {"prompt": "KING.", "max_tokens": rng.randint(8, 48), "temperature": 0.8}
                r = await client.post(f"{url}/v1/completions", json=body)
                ok = r.status_code == 200
                code = f"http_{r.status_code}"
            else:
                body = {"prompt": "ROMEO.", "max_tokens": rng.randint(8, 64), "temperature": 0.8, "stream": True}
                ok, code, chunks = False, "incomplete_stream", 0
                async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            ok = True
                            break
                        if line.startswith('data: {"error"'):
                            code = "error_chunk"
                            break
                        chunks += line.startswith("data: ")
                        if kind == "drop" and chunks >= 3:
                            ok = True  # hanging up is the point of this client
                            break
        except httpx.HTTPError as exc:
            ok, code = False, type(exc).__name__
        if ok:
            served += 1
            latencies[int((start - t0) // 60)].append(time.monotonic() - start)
        else:
            failures[code] += 1

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while time.monotonic() < end:
                await one(client)

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return {
        "served": served,
        "failures": dict(failures),
        "p99_by_minute": {m: float(np.percentile(v, 99)) for m, v in sorted(latencies.items())},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (below the 32-sequence capacity)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-seconds", type=float, default=30.0, help="traffic before the start RSS is taken")
    args = p.parse_args(argv)
    with serving({}) as server:
        # Caches and allocator pools grow to their working size first: growth after that is what a leak looks like.
        asyncio.run(soak(server.url, args.warmup_seconds / 60, args.clients, args.seed + 1))
        before = rss_by_process(server.proc.pid)
        result = asyncio.run(soak(server.url, args.minutes, args.clients, args.seed))
        after = rss_by_process(server.proc.pid)
    print(
        f"{args.minutes:g} minutes, {args.clients} clients: {result['served']} requests served,"
        f" failures {result['failures'] or 0}"
    )
    print("\n| minute | p99 latency (s) |\n|---:|---:|")
    for minute, p99 in result["p99_by_minute"].items():  # type: ignore[attr-defined]
        print(f"| {minute + 1} | {p99:.3f} |")
    print("\n| process | RSS start (MB) | RSS end (MB) | growth |\n|---|---:|---:|---:|")
    for name, start in before.items():
        end = after.get(name)
        if end is not None:
            print(f"| {name} | {start / 2**20:.0f} | {end / 2**20:.0f} | {end / start - 1:+.1%} |")


if __name__ == "__main__":
    main()
