"""The prefix cache in the engine alone (`python -m bench.prefix_cost`): what it costs requests that share nothing,
and what a cached prefix saves a prefill. A report, never a test.

1) Throughput: the shipped GPT with the cache on and off, interleaved, every prompt new (random token ids), greedy,
   a closed loop of 1 and of 32 sequences; timed by this process's CPU time, which other jobs on the cores do not
   inflate as they do wall time. 2) Prefill: a prompt whose first tokens an earlier one sent, against a cold one.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from model.engine import Engine, SamplingParams
from model.gpt import load_gpt

VOCAB_SAFE = 4000  # token ids drawn below this: every one a plain token of the shipped vocabulary


def tokens_per_cpu_second(
    engine: Engine, rng: random.Random, clients: int, requests: int, args: argparse.Namespace
) -> float:
    """Generated tokens per CPU-second for `requests` new prompts, `clients` at a time."""
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, min_tokens=args.max_tokens)
    prompts = [[rng.randrange(1, VOCAB_SAFE) for _ in range(args.prompt_tokens)] for _ in range(requests)]
    live = finished = generated = 0
    t0 = time.process_time()
    while finished < requests:
        while prompts and live < clients:
            engine.add_request(f"r{rng.getrandbits(64)}", prompts.pop(), params)
            live += 1
        for ev in engine.step():
            generated += ev.token_id is not None
            if ev.finish_reason is not None:
                live, finished = live - 1, finished + 1
    return generated / (time.process_time() - t0)


def prefill_seconds(engine: Engine, prompt: list[int]) -> float:
    """One prefill of `prompt`, which it finishes (one token asked)."""
    engine.add_request("probe", prompt, SamplingParams(max_tokens=1, temperature=0.0))
    t0 = time.perf_counter()
    engine.prefill()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--prompt-tokens", type=int, default=33)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prefix", type=int, default=180, help="tokens shared by the prefill probe's prompts")
    p.add_argument("--rows", type=int, default=64, help="the prefix cache's rows (the server's default)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the server's GPT worker runs one
    model = load_gpt()
    rng = random.Random(0)
    engines = {"off": Engine(model, max_prefill_tokens=64), "on": Engine(model, 64, 64, args.rows)}
    tps: dict[tuple[str, int], list[float]] = {(name, c): [] for name in engines for c in (1, 32)}
    for rep in range(args.repeats):
        for clients, requests in ((1, 6), (32, 96)):
            for name in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                tps[name, clients].append(tokens_per_cpu_second(engines[name], rng, clients, requests, args))
    med = statistics.median
    print(f"the engine alone, one thread, new {args.prompt_tokens}-token prompts, {args.max_tokens} new tokens, "
          f"{args.repeats} repeats, medians\n")  # fmt: skip
    print("| sequences | cache off tok/CPU-s | cache on tok/CPU-s | on / off |\n|---:|---:|---:|---:|")
    for c in (1, 32):
        ratio = med(a / b for a, b in zip(tps["on", c], tps["off", c], strict=True))
        print(f"| {c} | {med(tps['off', c]):,.0f} | {med(tps['on', c]):,.0f} | {ratio:.3f} |")
    shared, cold = [], []
    n = args.prefix + 4
    for _ in range(10 * args.repeats):
        prefix = [rng.randrange(1, VOCAB_SAFE) for _ in range(args.prefix)]
        prefill_seconds(engines["on"], prefix + [rng.randrange(1, VOCAB_SAFE) for _ in range(4)])
        shared.append(prefill_seconds(engines["on"], prefix + [rng.randrange(1, VOCAB_SAFE) for _ in range(4)]))
        cold.append(prefill_seconds(engines["on"], [rng.randrange(1, VOCAB_SAFE) for _ in range(n)]))
    print(f"\nprefill of a {n}-token prompt: cold {med(cold) * 1e3:.2f} ms, {args.prefix} tokens cached"
          f" {med(shared) * 1e3:.2f} ms ({med(shared) / med(cold):.2f}x), medians of {len(cold)}")  # fmt: skip


if __name__ == "__main__":
    main()
