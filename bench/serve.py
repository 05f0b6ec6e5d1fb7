"""`make bench-serve`: streamed completions through HTTP vs the raw engine, at the same concurrency, in one run.

The server runs as `python -m service` on a free loopback port; the client is `bench.loadgen` (closed loop, streaming,
vLLM's definitions). The raw engine runs in this process with the same model, prompt, batch limit and prefill budget,
as a closed loop of the same size, twice: with the server's torch threads (the same engine the server runs, with no
HTTP, no processes, no client beside it) and with every CPU (`--threads`; on a small machine the server cannot give
its engine every core, as the HTTP servers and the client need some). A report, never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bench.loadgen import LoadConfig, run_load, stats
from bench.process import HOST, Launched, free_port, launched
from model.engine import Engine, SamplingParams
from model.gpt import decode, eot_id, load_gpt, load_tokenizer
from service.settings import Settings

SOURCES = ("server", "engine", "engine_all")

PROMPT_SOURCE = (
    "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. Arise, fair "
    "sun, and kill the envious moon, who is already sick and pale with grief that thou her maid art far more fair."
)


@contextmanager
def serving(env: dict[str, str]) -> Iterator[Launched]:
    """`python -m service` on a free loopback port with these settings, healthy inside the block, stopped by
    SIGTERM after it; its log in a temporary folder (quoted if it fails to start)."""
    port = free_port()
    env = {**os.environ, **env, "TINYSERVE_HOST": HOST, "TINYSERVE_PORT": str(port)}
    with tempfile.TemporaryDirectory(prefix="tinyserve-bench-") as logs:
        with launched([sys.executable, "-m", "service"], port, env, Path(logs) / "server.log") as server:
            yield server


def raw_engine(
    engine: Engine, prompt_ids: list[int], params: SamplingParams, concurrency: int, n: int
) -> dict[str, Any]:
    """A closed loop of `concurrency` sequences straight on the engine: output tokens/s and TTFT."""
    submitted, active, tokens = 0, 0, 0
    added: dict[str, float] = {}
    ttft: list[float] = []
    t0 = time.perf_counter()
    while submitted < n or engine.has_work():
        while active < concurrency and submitted < n:
            rid = f"r{submitted}"
            engine.add_request(rid, prompt_ids, params)
            added[rid] = time.perf_counter()
            submitted += 1
            active += 1
        # As the server does: first tokens are out once prefill() returns, before the decode step.
        for phase in (engine.prefill, engine.decode):
            for ev in phase():
                if ev.token_id is not None:
                    tokens += 1
                    if ev.request_id in added:
                        ttft.append(time.perf_counter() - added.pop(ev.request_id))
                if ev.finish_reason is not None:
                    active -= 1
    wall = time.perf_counter() - t0
    return {"output_throughput": tokens / wall, "ttft_s": stats(ttft), "output_tokens": tokens}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-slot", type=int, default=10, help="requests per level = this x concurrency (min 8)")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of the second raw-engine run: the whole machine (default: every CPU)",
    )
    p.add_argument(
        "--url",
        default=None,
        help="measure this running server instead of starting one (its settings: the defaults plus --set)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs of every level; the table shows medians")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting for this run, e.g. --set torch_threads=1 (repeatable)",
    )
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    batch = max(levels)
    overrides = dict(item.split("=", 1) for item in args.set)
    # The server's settings for this run: the raw engine gets the same batch limit, prefill budget and threads.
    settings = Settings(**{"gpt_max_batch_size": str(batch), **overrides})  # type: ignore[arg-type]

    tok = load_tokenizer()
    prompt_ids = tok.encode(PROMPT_SOURCE, add_special_tokens=False)[: args.prompt_tokens]
    prompt = decode(tok, prompt_ids)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, stop_token_ids=(eot_id(tok),))
    sizes = {c: max(8, args.requests_per_slot * c) for c in levels}

    # runs[key][c]: one summary per repeat; key is "server", "engine" (server's threads) or "engine_all".
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {k: {c: [] for c in levels} for k in SOURCES}
    env = {"TINYSERVE_GPT_MAX_BATCH_SIZE": str(batch)}
    env.update({f"TINYSERVE_{k.upper()}": v for k, v in overrides.items()})
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(serving(env)).url
        for r in range(args.repeat):
            for c in levels:
                cfg = LoadConfig(
                    url=url,
                    concurrency=c,
                    num_requests=sizes[c],
                    prompts=[prompt],
                    max_tokens=args.max_tokens,
                    temperature=0.0,
                    warmup=2,
                )
                runs["server"][c].append(asyncio.run(run_load(cfg)))
                tps = runs["server"][c][-1]["output_throughput"]
                print(f"[{r + 1}/{args.repeat}] server c={c}: {tps:.0f} tok/s", flush=True)

    # Two ceilings: the engine as the server runs it (its torch threads), and the engine given the whole machine.
    # On the server's device: `auto` is CUDA where there is one, as LitServe picks.
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_gpt(device=auto if settings.accelerator == "auto" else settings.accelerator)
    for key, threads in (("engine", settings.torch_threads), ("engine_all", args.threads)):
        torch.set_num_threads(threads)
        engine = Engine(model, max_batch_size=batch, max_prefill_tokens=settings.gpt_max_prefill_tokens)
        raw_engine(engine, prompt_ids, params, 1, 2)  # warm-up
        for r in range(args.repeat):
            for c in levels:
                runs[key][c].append(raw_engine(engine, prompt_ids, params, c, sizes[c]))
                tps = runs[key][c][-1]["output_throughput"]
                print(f"[{r + 1}/{args.repeat}] raw engine ({threads} threads) c={c}: {tps:.0f} tok/s", flush=True)

    print()
    print(
        f"prompt {len(prompt_ids)} tokens, {args.max_tokens} new tokens, greedy; server: {settings.torch_threads}"
        f" torch thread(s) in its GPT worker, {settings.api_servers} HTTP servers, prefill budget"
        f" {settings.gpt_max_prefill_tokens} tokens; the raw engine on {model.device} ({model.dtype});"
        f" {os.cpu_count()} CPUs shared with this client; torch"
        f" {torch.__version__}; medians of {args.repeat} runs (a ratio: the median of the runs' ratios)"
    )
    print()
    t1, tn = settings.torch_threads, args.threads
    print(
        f"| concurrency | server tok/s | engine ({t1} thr) tok/s | server / engine | engine ({tn} thr) tok/s"
        f" | server / engine ({tn} thr) | server TTFT p50 ms | TTFT p99 ms | engine TTFT p50 ms | failures |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    table: dict[int, dict[str, float]] = {}
    for c in levels:
        srv, eng, all_ = runs["server"][c], runs["engine"][c], runs["engine_all"][c]
        row = table[c] = {
            "server_tps": _median(x["output_throughput"] for x in srv),
            "engine_tps": _median(x["output_throughput"] for x in eng),
            "engine_all_tps": _median(x["output_throughput"] for x in all_),
            "ratio": _median(a["output_throughput"] / b["output_throughput"] for a, b in zip(srv, eng, strict=True)),
            "ratio_all": _median(
                a["output_throughput"] / b["output_throughput"] for a, b in zip(srv, all_, strict=True)
            ),
            "server_ttft_p50": _median(x["ttft_s"]["median"] for x in srv),
            "server_ttft_p99": _median(x["ttft_s"]["p99"] for x in srv),
            "engine_ttft_p50": _median(x["ttft_s"]["median"] for x in eng),
            "failures": sum(sum(x["failures"].values()) for x in srv),
        }
        print(
            f"| {c} | {row['server_tps']:,.0f} | {row['engine_tps']:,.0f} | {row['ratio']:.2f}"
            f" | {row['engine_all_tps']:,.0f} | {row['ratio_all']:.2f} | {row['server_ttft_p50'] * 1e3:.1f}"
            f" | {row['server_ttft_p99'] * 1e3:.1f} | {row['engine_ttft_p50'] * 1e3:.1f} | {row['failures']:.0f} |"
        )
    lo, hi = min(levels), max(levels)
    ratio = table[hi]["server_ttft_p50"] / table[lo]["server_ttft_p50"]
    eratio = table[hi]["engine_ttft_p50"] / table[lo]["engine_ttft_p50"]
    print()
    print(f"server TTFT p50 at c={hi} / at c={lo}: {ratio:.2f} (raw engine: {eratio:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "runs": runs}, indent=2))


def _median(values: Any) -> float:
    return float(statistics.median(list(values)))


if __name__ == "__main__":
    main()
