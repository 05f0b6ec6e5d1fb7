"""Streamed completions through HTTP from this tree's server and a git revision's, and Hugging Face `generate` at
batch 1 on one thread, interleaved in one run (`python -m bench.serve_ab --base REV`).

Both servers run at once on loopback ports with the default settings (the GPT's batch limit raised to the largest
concurrency), idle while the other is measured; each repeat measures, in alternating order, generate, then every
concurrency on each server. Figures are medians over repeats; a ratio is the median of the repeats' ratios.
A report, never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.loadgen import LoadConfig, run_load
from bench.process import REPO, free_port, launched
from bench.serve import PROMPT_SOURCE
from model.gpt import decode, load_gpt, load_tokenizer


def generate_tps(prompt_ids: list[int], max_tokens: int) -> float:
    """Hugging Face `generate`, greedy, batch 1, one thread: new tokens/s over the whole call."""
    model = load_gpt(device="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens,
                min_new_tokens=max_tokens, pad_token_id=0,
            )  # fmt: skip
            return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="main", help="the git revision to compare against")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-slot", type=int, default=10)
    p.add_argument(
        "--distinct",
        action="store_true",
        help="each prompt begins with its own number: no two share a prefix",
    )
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    tok = load_tokenizer()
    prompt_ids = tok.encode(PROMPT_SOURCE, add_special_tokens=False)[: args.prompt_tokens]
    prompt = decode(tok, prompt_ids)
    env = {**os.environ, "TINYSERVE_GPT_MAX_BATCH_SIZE": str(max(levels))}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"old": {c: [] for c in levels}, "new": {c: [] for c in levels}}
    generate: list[float] = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyserve-ab-")))
        base = folder / "base"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.base], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        urls = {}
        for name, tree in (("old", base), ("new", REPO)):
            port = free_port()
            server_env = {**env, "TINYSERVE_HOST": "127.0.0.1", "TINYSERVE_PORT": str(port)}
            argv = [sys.executable, "-m", "service"]
            urls[name] = stack.enter_context(launched(argv, port, server_env, folder / f"{name}.log", tree)).url
        for rep in range(args.repeats):
            generate.append(generate_tps(prompt_ids, args.max_tokens))
            for c in levels:
                for name in ("old", "new") if rep % 2 == 0 else ("new", "old"):
                    n = max(8, args.requests_per_slot * c)
                    # A new number each request, level and repeat: no prompt was seen before (the prefix cache).
                    prompts = [f"{rep}-{c}-{i} {prompt}" for i in range(n)] if args.distinct else [prompt]
                    warm = [f"warm-up {rep}-{c} {prompt}"] if args.distinct else [prompt]
                    for measured, k in ((False, 2), (True, n)):  # the warm-up's prompts are not measured again
                        cfg = LoadConfig(
                            url=urls[name], concurrency=c if measured else 1, num_requests=k,
                            prompts=prompts if measured else warm,
                            max_tokens=args.max_tokens, temperature=0.0, warmup=0,
                        )  # fmt: skip
                        summary = asyncio.run(run_load(cfg))
                    runs[name][c].append(summary)
                    tps = runs[name][c][-1]["output_throughput"]
                    print(f"[{rep + 1}/{args.repeats}] {name} c={c}: {tps:.0f} tok/s", flush=True)
    med = statistics.median
    print(
        f"\nthis tree vs {args.base}; prompt {len(prompt_ids)} tokens"
        f"{' after its own number' if args.distinct else ''}, {args.max_tokens} new, greedy; {args.repeats}"
        f" repeats; {os.cpu_count()} CPUs shared by both servers and this client; generate (batch 1, one thread):"
        f" {med(generate):.0f} tok/s\n"
    )
    print("| concurrency | old tok/s | new tok/s | new / old | old / generate | new / generate | old TTFT p50 ms"
          " | new TTFT p50 ms |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        old, new = runs["old"][c], runs["new"][c]
        ttft_old, ttft_new = (med(x["ttft_s"]["median"] for x in side) * 1e3 for side in (old, new))
        tps_old = [x["output_throughput"] for x in old]
        tps_new = [x["output_throughput"] for x in new]
        print(
            f"| {c} | {med(tps_old):,.0f} | {med(tps_new):,.0f}"
            f" | {med(n / o for n, o in zip(tps_new, tps_old, strict=True)):.2f}x"
            f" | {med(o / g for o, g in zip(tps_old, generate, strict=True)):.2f}x"
            f" | {med(n / g for n, g in zip(tps_new, generate, strict=True)):.2f}x"
            f" | {ttft_old:.1f} | {ttft_new:.1f} |"
        )


if __name__ == "__main__":
    main()
