"""Does a user looking at attention slow anyone's stream? Streamed completions from a closed loop of N clients, with
and without one more client polling POST /v1/attention (a 128-token prompt, every layer and head), in alternating
rounds against the same server. A report, never a test.

    python -m bench.attention_poll                                   # starts `python -m service` on a free port
    python -m bench.attention_poll --url http://127.0.0.1:8000 --concurrency 32 --rounds 3 --poll-interval 0.25
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

import aiohttp

from bench.loadgen import LoadConfig, run_load, stats
from bench.prompts import build_prompts, local_tokenizer
from bench.serve import serving
from service.schemas.introspection import MAX_INSIDE_TOKENS


async def poll(url: str, prompt: str, interval: float, stop: asyncio.Event) -> list[float]:
    """POST /v1/attention every `interval` seconds (0: back to back) until `stop`; each answer's latency."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            start = time.perf_counter()
            async with client.post(f"{url}/v1/attention", json={"prompt": prompt}) as response:
                await response.read()
                response.raise_for_status()
            latencies.append(time.perf_counter() - start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    return latencies


async def one_round(cfg: LoadConfig, prompt: str | None, interval: float) -> dict[str, Any]:
    """One load level; with `prompt`, an attention poller runs beside it for the whole level."""
    stop = asyncio.Event()
    poller = asyncio.create_task(poll(cfg.url, prompt, interval, stop)) if prompt else None
    try:
        summary = await run_load(cfg)
    finally:
        stop.set()
    latencies = await poller if poller else []
    return {
        "output_throughput": summary["output_throughput"],
        "ttft_p50_ms": summary["ttft_s"]["median"] * 1000,
        "itl_p50_ms": summary["itl_s"]["median"] * 1000,
        "failed": summary["failed"],
        "polls": len(latencies),
        "poll_p50_ms": stats(latencies)["median"] * 1000 if latencies else None,
        "polls_per_s": len(latencies) / summary["duration_s"],
    }


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("output_throughput", "ttft_p50_ms", "itl_p50_ms", "polls", "poll_p50_ms", "polls_per_s", "failed")
    return {k: statistics.median(r[k] for r in rounds) for k in keys if all(r[k] is not None for r in rounds)}


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    texts = local_tokenizer()
    cfg = LoadConfig(
        url=url,
        concurrency=args.concurrency,
        num_requests=args.concurrency * args.requests_per_client,
        prompts=build_prompts(texts, 32, 16),
        max_tokens=64,
    )
    # A little under the limit: the window's pieces, joined, may tokenize to a token or two more.
    attention_prompt = build_prompts(texts, MAX_INSIDE_TOKENS - 8)[0]
    plain: list[dict[str, Any]] = []
    polled: list[dict[str, Any]] = []
    for _ in range(args.rounds):  # alternating, so a slow spell of the machine falls on both
        plain.append(asyncio.run(one_round(cfg, None, args.poll_interval)))
        polled.append(asyncio.run(one_round(cfg, attention_prompt, args.poll_interval)))
    a, b = medians(plain), medians(polled)
    return {
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "poll_interval_s": args.poll_interval,
        "plain": a,
        "polled": b,
        "throughput_ratio": b["output_throughput"] / a["output_throughput"],
        "ttft_ratio": b["ttft_p50_ms"] / a["ttft_p50_ms"],
        "itl_ratio": b["itl_p50_ms"] / a["itl_p50_ms"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: start one on a free loopback port)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--requests-per-client", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternating (medians reported)")
    p.add_argument("--poll-interval", type=float, default=0.25, help="seconds between attention requests (0: none)")
    args = p.parse_args()
    if args.url:
        result = measure(args.url, args)
    else:
        with serving({}) as server:
            result = measure(server.url, args)
    print(json.dumps(result, indent=2))
    a, b = result["plain"], result["polled"]
    print(
        f"\n{args.concurrency} streams: {a['output_throughput']:,.0f} tok/s alone, {b['output_throughput']:,.0f} with"
        f" {b['polls_per_s']:.1f} attention requests/s beside them ({result['throughput_ratio']:.2f}x);"
        f" TTFT p50 {a['ttft_p50_ms']:.1f} -> {b['ttft_p50_ms']:.1f} ms, ITL p50 {a['itl_p50_ms']:.1f} ->"
        f" {b['itl_p50_ms']:.1f} ms; an attention answer took {b['poll_p50_ms']:.0f} ms (p50)"
    )


if __name__ == "__main__":
    main()
