"""An asyncio HTTP load generator with the definitions of `vllm bench serve`.

Closed loop (`concurrency` requests in flight) or open loop (Poisson arrivals at `request_rate`, optionally capped at
`concurrency` in flight, as vLLM's `--max-concurrency`). For streamed completions it measures, per request: TTFT (from
just before the POST to the first chunk carrying choices), ITL (gaps between successive such chunks, pooled over all
requests), TPOT ((E2EL - TTFT) / (output tokens - 1), per request, then averaged) and E2EL (to the last chunk carrying
choices); output tokens come from the usage chunk (`stream_options.include_usage`), else one per chunk with text.
Percentiles are numpy's (linear interpolation), as vLLM's.

Bounded: at most `num_requests` requests, none started after `duration_s`, and each one cut off after `timeout_s`,
so a run ends within duration_s + timeout_s whatever the server does. Failures are counted by kind: `http_<status>`,
`stream_error:<code>`, `incomplete_stream` (the connection ended before the last chunk), `bad_chunk` (not JSON),
`timeout`, or the name of the transport error (`ClientConnectorError`, `ServerDisconnectedError`, ...).

The HTTP client is aiohttp, as in vLLM's benchmark: on the same 2 cores as the server it used 0.20 of a core at 32
streams where httpx used 0.51 (measured), and a load generator's CPU is taken from the server it measures (httpx
showed 17% fewer output tokens/s and twice the TTFT for the same server).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

DEFAULT_PROMPT = "ROMEO.\nWhat light through yonder window breaks?"


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


@dataclass
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    endpoint: str = "completions"  # or "classify"
    concurrency: int | None = 8  # closed loop; with request_rate, the most requests in flight (None: no cap)
    request_rate: float | None = None  # requests/s, Poisson arrivals (open loop) when set
    num_requests: int = 64
    duration_s: float = 120.0  # no request starts after this
    timeout_s: float = 120.0  # one request's limit, stream included
    prompts: list[str] = field(default_factory=lambda: [DEFAULT_PROMPT])
    max_tokens: int = 64
    temperature: float = 0.0
    warmup: int = 2
    seed: int = 0
    model: str | None = None  # the `model` field of completions requests; servers that need one get it here
    api_key: str | None = None  # sent as `Authorization: Bearer <key>` when set


class _Failure(Exception):
    """A request that failed in a known way; `kind` is the failure key."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _error_kind(chunk: dict[str, Any]) -> str:
    # OpenAI-style servers send {"error": {"code": ..., "type": ...}}; transformers serve sends {"error": "text"}.
    err = chunk["error"]
    if isinstance(err, dict):
        return f"stream_error:{err.get('code') or err.get('type') or 'unknown'}"
    return "stream_error:unknown"


async def _completion(client: aiohttp.ClientSession, cfg: LoadConfig, prompt: str) -> Result:
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.model is not None:
        body["model"] = cfg.model
    res = Result(ok=False)
    done = finished = False
    text_chunks = 0
    usage_tokens: int | None = None
    last: float | None = None
    t0 = time.perf_counter()
    async with client.post(f"{cfg.url}/v1/completions", json=body) as r:
        if r.status != 200:
            await r.read()
            raise _Failure(f"http_{r.status}")
        async for raw in r.content:  # one line at a time, as the server's bytes arrive
            if not raw.startswith(b"data:"):
                continue
            data = raw[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise _Failure("bad_chunk") from None
            if not isinstance(chunk, dict):
                raise _Failure("bad_chunk")
            if "error" in chunk:
                raise _Failure(_error_kind(chunk))
            choices = chunk.get("choices")
            if choices:
                now = time.perf_counter()
                if last is None:
                    res.ttft = now - t0
                else:
                    res.itl.append(now - last)
                last = now
                if choices[0].get("text"):
                    text_chunks += 1
                if choices[0].get("finish_reason"):
                    finished = True
            if chunk.get("usage"):
                usage_tokens = int(chunk["usage"]["completion_tokens"])
    # Some servers (transformers serve) close the stream after the last chunk without `[DONE]`: a finish reason
    # is then the proof that the answer is complete.
    if last is None or not (done or finished):
        raise _Failure("incomplete_stream")
    res.ok = True
    res.e2el = last - t0
    res.output_tokens = usage_tokens if usage_tokens is not None else text_chunks
    return res


async def _classify(client: aiohttp.ClientSession, cfg: LoadConfig, rng: random.Random) -> Result:
    pixels = [rng.uniform(-1, 1) for _ in range(9)]
    t0 = time.perf_counter()
    async with client.post(f"{cfg.url}/v1/classify", json={"pixels": pixels}) as r:
        await r.read()
    e2el = time.perf_counter() - t0
    if r.status != 200:
        raise _Failure(f"http_{r.status}")
    return Result(ok=True, e2el=e2el, ttft=e2el)


async def _guarded(cfg: LoadConfig, request: Any) -> Result:
    """Run one request within its time limit; turn every way it can fail into a counted kind."""
    try:
        return await asyncio.wait_for(request, cfg.timeout_s)
    except _Failure as exc:
        return Result(ok=False, error=exc.kind)
    except TimeoutError:
        return Result(ok=False, error="timeout")
    except aiohttp.ClientError as exc:
        return Result(ok=False, error=type(exc).__name__)
    except (KeyError, TypeError, ValueError) as exc:  # a chunk of an unexpected shape
        return Result(ok=False, error=f"bad_chunk:{type(exc).__name__}")


async def run_load(cfg: LoadConfig, on_result: Callable[[Result], None] | None = None) -> dict[str, Any]:
    """Run one load level and return its summary (see `summarize`); `on_result` sees each measured request."""
    if cfg.endpoint not in ("completions", "classify"):
        raise ValueError(f"unknown endpoint {cfg.endpoint!r}")
    if cfg.request_rate is None and not cfg.concurrency:
        raise ValueError("give a concurrency (closed loop) or a request rate (open loop)")
    rng = random.Random(cfg.seed)
    # No connection cap: a pool smaller than the load would queue requests inside the client, and that wait
    # would be counted as server latency.
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),  # 0: no cap
        timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
        headers=headers,
    )
    async with client:

        async def one(i: int) -> Result:
            if cfg.endpoint == "classify":
                return await _guarded(cfg, _classify(client, cfg, rng))
            return await _guarded(cfg, _completion(client, cfg, cfg.prompts[i % len(cfg.prompts)]))

        for i in range(cfg.warmup):
            await one(i)
        results: list[Result] = []

        def record(res: Result) -> None:
            results.append(res)
            if on_result is not None:
                on_result(res)

        t0 = time.perf_counter()
        deadline = t0 + cfg.duration_s
        if cfg.request_rate:
            cap = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else None

            async def arrival(i: int) -> None:
                if cap is None:
                    record(await one(i))
                    return
                async with cap:
                    record(await one(i))

            tasks = []
            for i in range(cfg.num_requests):
                if time.perf_counter() > deadline:
                    break
                tasks.append(asyncio.create_task(arrival(i)))
                if i + 1 < cfg.num_requests:
                    await asyncio.sleep(rng.expovariate(cfg.request_rate))
            await asyncio.gather(*tasks)
        else:
            counter = iter(range(cfg.num_requests))

            async def worker() -> None:
                for i in counter:
                    if time.perf_counter() > deadline:
                        return
                    record(await one(i))

            await asyncio.gather(*(worker() for _ in range(cfg.concurrency or 1)))
        wall = time.perf_counter() - t0
    summary = summarize(results, wall)
    if cfg.endpoint == "classify":  # no tokens, no stream: one latency per request
        for key in ("output_throughput", "output_tokens", "ttft_s", "tpot_s", "itl_s"):
            del summary[key]
    summary["config"] = {
        "endpoint": cfg.endpoint,
        "concurrency": cfg.concurrency,
        "request_rate": cfg.request_rate,
        "num_requests": cfg.num_requests,
        "max_tokens": cfg.max_tokens if cfg.endpoint == "completions" else None,
        "warmup": cfg.warmup,
    }
    return summary


def stats(values: list[float]) -> dict[str, float]:
    """Mean, median, p90 and p99 (nan when empty)."""
    if not values:
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan"), "p99": float("nan")}
    arr = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"mean": float(arr.mean()), "median": float(p50), "p90": float(p90), "p99": float(p99)}


def jsonable(value: Any) -> Any:
    """`value` with every NaN (a statistic of no values) as None, so that the JSON is strict."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def summarize(results: list[Result], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    failures: dict[str, int] = {}
    for r in results:
        if not r.ok:
            failures[r.error] = failures.get(r.error, 0) + 1
    tpot = [(r.e2el - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    out_tokens = sum(r.output_tokens for r in ok)
    return {
        "requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "failures": failures,
        "duration_s": wall,
        "request_throughput": len(ok) / wall if wall else 0.0,
        "output_throughput": out_tokens / wall if wall else 0.0,
        "output_tokens": out_tokens,
        "ttft_s": stats([r.ttft for r in ok]),
        "tpot_s": stats(tpot),
        "itl_s": stats([g for r in ok for g in r.itl]),
        "e2el_s": stats([r.e2el for r in ok]),
    }
