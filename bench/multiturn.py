"""Multi-turn chats through `/v1/chat/completions` (issue 24): N users at once, each with 6 turns, every turn
re-sending the conversation so far, streamed. Reports TTFT p50 and p99 of turns 2-6 (and of turn 1), the prefix-cache
hit rate (from /metrics, before and after) and output tokens/s. A report, never a test.

`--url URL`: against any OpenAI-compatible server or router; each user sends its id as `user` and in the
`x-session-id` header (`--session-header`), so a router can keep a conversation on one replica; `--metrics-url` lists
the /metrics of each replica to read the hit rate from. `--compare`: two servers from this tree, the prefix cache on
and off, run interleaved in one run (medians over `--repeats`), with the probe of issue 24's done-when: the time to
first token of a prompt sharing a 180-token prefix with an earlier one, against a cold prompt of the same length.
`--replicas`: two servers from this tree (the prefix cache on) behind a local HAProxy on the shipped
deploy/haproxy/haproxy.cfg, the chats run interleaved with affinity (each user sends its id, so its conversation stays
on one replica) and without (no id: HAProxy spreads the turns round robin); the hit rate is read from both replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.process import HAPROXY_CFG, REPLICAS, REPO, balanced, free_port, launched

PLACES = ["A street in Venice", "Cyprus, a sea-port", "A hall in the castle", "Before the castle", "A bedchamber"]
# What each user says, in turn: user i's turn t says LINES[(i + t) % len(LINES)].
LINES = [
    "What news, honest Iago?",
    "Speak, and tell me all.",
    "Where is Cassio now?",
    "I do not like this hour.",
    "Give me the proof of it.",
    "Away, and leave me here.",
    "Is the fleet come in?",
    "Who goes there at this time?",
    "Say, is my lady well?",
]
TURNS = 6
PROBE_PREFIX = 180  # tokens: issue 24's done-when


@dataclass
class Turn:
    user: int
    turn: int  # 1-based
    ttft: float  # to the first chunk carrying reply text (the role chunk that opens the stream comes before any token)
    tokens: int  # completion tokens, from the usage chunk
    prompt_tokens: int
    replica: str = ""  # the replica that answered, when a router says (HAProxy's x-tinyserve-replica)


@dataclass
class Run:
    turns: list[Turn] = field(default_factory=list)
    wall: float = 0.0
    hit_rate: float | None = None  # None: the server exports no prefix-cache counters

    def ttft(self, first: int, last: int, q: float) -> float:
        return float(np.percentile([t.ttft for t in self.turns if first <= t.turn <= last], q))

    @property
    def output_tps(self) -> float:
        return sum(t.tokens for t in self.turns) / self.wall


async def prefix_counters(client: aiohttp.ClientSession, urls: list[str]) -> tuple[float, float] | None:
    """(queries, hits) summed over the servers' /metrics, or None when they export none."""
    queries = hits = 0.0
    found = False
    for url in urls:
        async with client.get(f"{url}/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("tinyserve_gpt_prefix_cache_queries_total"):
                queries, found = queries + float(value), True
            elif name.startswith("tinyserve_gpt_prefix_cache_hits_total"):
                hits += float(value)
    return (queries, hits) if found else None


async def chat_turn(
    client: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], user: str | None, args: argparse.Namespace
) -> tuple[float, str, tuple[int, int], str]:
    """One streamed turn: (time to first reply text, the reply, (prompt tokens, completion tokens), the replica).
    `user` None: no id sent, neither as `user` nor in the session header."""
    body: dict[str, Any] = {
        "messages": messages, "max_tokens": args.max_tokens, "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    headers = {}
    if user is not None:
        body["user"], headers[args.session_header] = user, user
    if args.model:
        body["model"] = args.model
    ttft, parts, tokens = 0.0, [], (0, 0)
    t0 = time.perf_counter()
    async with client.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        replica = r.headers.get("x-tinyserve-replica", "")
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
        async for raw in r.content:
            if not raw.startswith(b"data:") or raw[5:].strip() == b"[DONE]":
                continue
            chunk = json.loads(raw[5:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                text = choice["delta"].get("content")
                if text or choice.get("finish_reason"):
                    ttft = ttft or time.perf_counter() - t0
                parts.append(text or "")
            if chunk.get("usage"):
                tokens = (int(chunk["usage"]["prompt_tokens"]), int(chunk["usage"]["completion_tokens"]))
    return ttft, "".join(parts), tokens, replica


async def warm_up(urls: list[str], args: argparse.Namespace, tag: str) -> None:
    """A server's first requests pay for its warm-up (hundreds of ms): not the conversations'."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client:
        for url in urls:
            await chat_turn(client, url, [{"role": "user", "content": LINES[0]}], f"warm-up-{tag}", args)


async def chats(url: str, metrics_urls: list[str], args: argparse.Namespace, tag: str, ids: bool = True) -> Run:
    """`args.users` conversations at once, each `TURNS` turns; `tag` makes this run's conversations its own; `ids`
    False: the users send no id (a router cannot keep a conversation on one replica)."""
    await warm_up([url], args, tag)
    run = Run()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client:
        before = await prefix_counters(client, metrics_urls)

        async def user(i: int) -> None:
            scene = f"{PLACES[i % len(PLACES)]}, the {tag}{i}th night. Enter OTHELLO and IAGO, with attendants."
            messages = [{"role": "system", "content": scene}]
            for t in range(1, TURNS + 1):
                messages.append({"role": "user", "content": LINES[(i + t) % len(LINES)]})
                ttft, reply, tokens, replica = await chat_turn(
                    client, url, messages, f"user-{tag}{i}" if ids else None, args
                )
                run.turns.append(Turn(i, t, ttft, tokens[1], tokens[0], replica))
                messages.append({"role": "assistant", "content": reply})

        t0 = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(args.users)))
        run.wall = time.perf_counter() - t0
        after = await prefix_counters(client, metrics_urls)
    if before is not None and after is not None and after[0] > before[0]:
        run.hit_rate = (after[1] - before[1]) / (after[0] - before[0])
    return run


async def first_token_s(client: aiohttp.ClientSession, url: str, prompt: list[int]) -> float:
    """Time to the first streamed chunk of a one-token completion of `prompt` (token ids)."""
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0.0, "stream": True}
    t0 = time.perf_counter()
    async with client.post(f"{url}/v1/completions", json=body) as r:
        async for raw in r.content:
            if raw.startswith(b"data:") and b'"choices"' in raw:
                return time.perf_counter() - t0
    raise RuntimeError(f"no token from {url} (HTTP {r.status})")


async def probe(url: str, rng: random.Random, pairs: int) -> tuple[list[float], list[float]]:
    """TTFTs of prompts sharing a 180-token prefix with an earlier request, and of cold prompts of the same length
    (random token ids: never seen before), interleaved."""
    warm, cold = [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        for _ in range(pairs):
            prefix = [rng.randrange(1, 4000) for _ in range(PROBE_PREFIX)]
            await first_token_s(client, url, prefix + [rng.randrange(1, 4000) for _ in range(4)])  # computes it
            warm.append(await first_token_s(client, url, prefix + [rng.randrange(1, 4000) for _ in range(4)]))
            cold.append(await first_token_s(client, url, [rng.randrange(1, 4000) for _ in range(PROBE_PREFIX + 4)]))
    return warm, cold


def row(name: str, runs: list[Run]) -> str:
    med = statistics.median
    hit = [r.hit_rate for r in runs if r.hit_rate is not None]
    ttfts = [
        med(r.ttft(first, last, q) for r in runs) * 1e3
        for first, last, q in ((2, TURNS, 50), (2, TURNS, 99), (1, 1, 50))
    ]
    rate = f"{med(hit):.1%}" if hit else "n/a"
    return f"| {name} | {' | '.join(f'{t:.1f}' for t in ttfts)} | {rate} | {med(r.output_tps for r in runs):,.0f} |"


def header(first: str = "server") -> str:
    return (
        f"| {first} | TTFT p50 turns 2-6 ms | TTFT p99 turns 2-6 ms | TTFT p50 turn 1 ms | hit rate | output tok/s |\n"
        "|---|---:|---:|---:|---:|---:|"
    )


def servers(
    stack: contextlib.ExitStack, settings: dict[str, dict[str, str]], users: int
) -> tuple[Path, dict[str, str]]:
    """A server from this tree for each name, with its own settings (environment), each healthy and stopped when
    `stack` closes (a temporary folder for their logs, removed then too): (that folder, each name's URL)."""
    env = {**os.environ, "TINYSERVE_GPT_MAX_BATCH_SIZE": str(max(32, users))}
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyserve-multiturn-")))
    urls = {}
    for name, extra in settings.items():
        port = free_port()
        server_env = {**env, **extra, "TINYSERVE_HOST": "127.0.0.1", "TINYSERVE_PORT": str(port)}
        log = folder / f"{name.replace(' ', '-')}.log"
        urls[name] = stack.enter_context(launched([sys.executable, "-m", "service"], port, server_env, log)).url
    return folder, urls


def compare(args: argparse.Namespace) -> None:
    """Two servers from this tree, the prefix cache on and off, interleaved; then the 180-token probe on each."""
    runs: dict[str, list[Run]] = {"cache on": [], "cache off": []}
    probes: dict[str, list[tuple[list[float], list[float]]]] = {name: [] for name in runs}
    with contextlib.ExitStack() as stack:
        _, urls = servers(stack, {"cache on": {}, "cache off": {"TINYSERVE_GPT_PREFIX_CACHE_ROWS": "0"}}, args.users)
        rng = random.Random(0)
        for rep in range(args.repeats):
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))
            for name in order:
                run = asyncio.run(chats(urls[name], [urls[name]], args, f"r{rep}u"))
                runs[name].append(run)
                print(f"[{rep + 1}/{args.repeats}] {name}: turns 2-6 TTFT p50 {run.ttft(2, TURNS, 50) * 1e3:.1f} ms,"
                      f" {run.output_tps:.0f} tok/s", flush=True)  # fmt: skip
            for name in order:
                probes[name].append(asyncio.run(probe(urls[name], rng, args.probe_pairs)))
    med = statistics.median
    longest = max(t.prompt_tokens for side in runs.values() for r in side for t in r.turns)
    print(f"\n{args.users} users x {TURNS} turns, max_tokens {args.max_tokens}, greedy, {args.repeats} repeats, "
          f"longest prompt {longest} tokens, {os.cpu_count()} CPUs shared by both servers and this client;"
          " medians over the repeats\n")  # fmt: skip
    print(header())
    for name, side in runs.items():
        print(row(name, side))
    print(f"\nA prompt sharing a {PROBE_PREFIX}-token prefix with an earlier request, against a cold prompt of the"
          f" same length ({PROBE_PREFIX + 4} tokens, one new token, {args.probe_pairs} pairs a repeat,"
          " medians):\n")  # fmt: skip
    print("| server | TTFT shared prefix ms | TTFT cold ms | shared / cold |\n|---|---:|---:|---:|")
    for name, reps in probes.items():
        warm = [w for ws, _ in reps for w in ws]
        cold = [c for _, cs in reps for c in cs]
        print(f"| {name} | {med(warm) * 1e3:.1f} | {med(cold) * 1e3:.1f} | {med(warm) / med(cold):.2f} |")


def stayed(run: Run) -> float:
    """The share of turns 2-6 answered by the replica that answered the same user's turn before."""
    replica = {(t.user, t.turn): t.replica for t in run.turns}
    later = [t for t in run.turns if t.turn > 1]
    return sum(t.replica == replica[t.user, t.turn - 1] for t in later) / len(later)


def replicas(args: argparse.Namespace) -> None:
    """Two servers from this tree (the prefix cache on) behind HAProxy on the shipped configuration; the chats with
    affinity and round robin, interleaved."""
    binary = shutil.which("haproxy")
    if binary is None:
        sys.exit("haproxy is not installed (apt-get install haproxy)")
    runs: dict[str, list[Run]] = {"affinity": [], "round robin": []}
    with contextlib.ExitStack() as stack:
        folder, urls = servers(stack, {name: {} for name in REPLICAS}, args.users)
        router = stack.enter_context(balanced(list(urls.values()), folder / "haproxy.log", binary)).url
        asyncio.run(warm_up(list(urls.values()), args, "replica"))
        for rep in range(args.repeats):
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))
            for name in order:
                tag = f"r{rep}{name[0]}u"  # each run's conversations new to both replicas
                run = asyncio.run(chats(router, list(urls.values()), args, tag, ids=name == "affinity"))
                runs[name].append(run)
                print(f"[{rep + 1}/{args.repeats}] {name}: turns 2-6 TTFT p50 {run.ttft(2, TURNS, 50) * 1e3:.1f} ms,"
                      f" hit rate {run.hit_rate or 0:.1%}, {run.output_tps:.0f} tok/s", flush=True)  # fmt: skip
    med = statistics.median
    longest = max(t.prompt_tokens for side in runs.values() for r in side for t in r.turns)
    print(f"\n{args.users} users x {TURNS} turns through HAProxy ({HAPROXY_CFG.relative_to(REPO)}) to two replicas"
          f" (prefix cache on), max_tokens {args.max_tokens}, greedy, {args.repeats} repeats, longest prompt"
          f" {longest} tokens, {os.cpu_count()} CPUs shared by both replicas, HAProxy and this client;"
          " medians over the repeats\n")  # fmt: skip
    print(header("routing"))
    for name, side in runs.items():
        print(row(name, side))
    print("\n| routing | turns 2-6 on the replica of the turn before | turns per replica |\n|---|---:|---|")
    for name, side in runs.items():
        counts = Counter(t.replica for r in side for t in r.turns)
        split = ", ".join(f"{replica} {counts[replica]}" for replica in sorted(counts))
        print(f"| {name} | {med(stayed(r) for r in side):.0%} | {split} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an OpenAI-compatible server or router (without /v1)")
    p.add_argument("--compare", action="store_true", help="start two servers, the prefix cache on and off")
    p.add_argument("--replicas", action="store_true", help="start two servers behind HAProxy: affinity, round robin")
    p.add_argument("--metrics-url", default="", help="comma-separated servers whose /metrics give the hit rate")
    p.add_argument("--users", type=int, default=8, help="conversations at once")
    p.add_argument("--max-tokens", type=int, default=16, help="most tokens a reply (6 turns must fit the context)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--probe-pairs", type=int, default=10, help="shared and cold prompts a repeat (--compare)")
    p.add_argument("--session-header", default="x-session-id", help="the header that carries each user's id")
    p.add_argument("--model", default="", help="the `model` field, for servers that need one")
    args = p.parse_args(argv)
    if [bool(args.url), args.compare, args.replicas].count(True) != 1:
        p.error("give one of --url, --compare and --replicas")
    if args.compare or args.replicas:
        (compare if args.compare else replicas)(args)
        return
    metrics_urls = [u for u in args.metrics_url.split(",") if u] or [args.url]
    tag = random.Random().randrange(1000)  # this run's conversations are new to the server
    runs = [asyncio.run(chats(args.url, metrics_urls, args, f"{tag}r{rep}u")) for rep in range(args.repeats)]
    longest = max(t.prompt_tokens for r in runs for t in r.turns)
    print(f"{args.users} users x {TURNS} turns, max_tokens {args.max_tokens}, greedy, {args.repeats} repeats,"
          f" longest prompt {longest} tokens, medians\n")  # fmt: skip
    print(header())
    print(row(args.url, runs))


if __name__ == "__main__":
    main()
