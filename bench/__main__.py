"""tinyserve bench: load-test a running tinyserve (or any OpenAI-compatible completions server) from the command line.

    python -m bench --concurrency 8 --num-requests 200              # closed loop, streamed completions
    python -m bench --request-rate 20 --duration 30                 # open loop, Poisson arrivals
    python -m bench --endpoint classify --concurrency 16
    python -m bench --sweep 1,2,4,8,16,32,64 --out bench-results    # one level each: PNG plots + Markdown table
    python -m bench --json ...                                      # the summary as JSON on stdout

Definitions are those of `vllm bench serve` (see bench/loadgen.py). Targets loopback only, unless --allow-remote.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from bench.loadgen import LoadConfig, Result, jsonable, run_load
from bench.prompts import TokenTexts, build_prompts, local_tokenizer, server_tokenizer

MAX_REQUESTS = 100_000
MAX_DURATION_S = 3600.0


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError("sweep levels must be integers >= 1")
    return levels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tinyserve-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (default %(default)s)")
    p.add_argument("--allow-remote", action="store_true", help="allow a URL that is not on this machine")
    p.add_argument("--endpoint", choices=["completions", "classify"], default="completions")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (closed loop; default 8)")
    p.add_argument("--request-rate", type=float, default=None, help="requests/s, Poisson arrivals (open loop)")
    p.add_argument("--num-requests", type=int, default=100, help="requests per level (default %(default)s)")
    p.add_argument("--duration", type=float, default=60.0, help="no request starts after this many seconds")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take, stream included")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length in tokens (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default %(default)s)")
    p.add_argument("--num-prompts", type=int, default=16, help="distinct prompts, used in turn")
    p.add_argument(
        "--tokenizer",
        choices=["auto", "server", "local"],
        default="auto",
        help="count prompt tokens with the server's /v1/tokenize, or model/weights/gpt (auto: server, else local)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TINYSERVE_API_KEY"),
        help="bearer token for a server started with TINYSERVE_API_KEY (default: that variable)",
    )
    p.add_argument("--model", default=None, help="the `model` field of each request (default: none sent)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=2, help="requests before each level, not measured")
    p.add_argument("--seed", type=int, default=0, help="seeds Poisson arrivals and classify inputs")
    p.add_argument("--sweep", type=_levels, default=None, help="comma-separated concurrency levels, e.g. 1,2,4,8")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="where --sweep writes its PNG and table")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the text report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if urlsplit(args.url).scheme not in ("http", "https"):
        p.error(f"--url must be http:// or https://, not {args.url!r}")
    if not args.allow_remote and not is_loopback(args.url):
        p.error(f"{args.url} is not a loopback address; pass --allow-remote to load-test another machine")
    if not 1 <= args.num_requests <= MAX_REQUESTS:
        p.error(f"--num-requests must be 1..{MAX_REQUESTS}")
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:.0f}] seconds")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    if args.concurrency is not None and args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.request_rate is not None and not args.request_rate > 0:
        p.error("--request-rate must be positive")
    if args.sweep and args.request_rate is not None:
        p.error("--sweep varies the concurrency (closed loop); it does not combine with --request-rate")
    if args.prompt_tokens < 1 or args.max_tokens < 1 or args.num_prompts < 1 or args.warmup < 0:
        p.error("--prompt-tokens, --max-tokens and --num-prompts must be >= 1, --warmup >= 0")


def pick_tokenizer(args: argparse.Namespace) -> tuple[TokenTexts, str, int | None]:
    """The tokenizer to count prompt tokens with, its name, and the server's context length when it says."""
    if args.tokenizer in ("auto", "server"):
        try:
            headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
            r = httpx.post(f"{args.url}/v1/tokenize", json={"prompt": "a"}, headers=headers, timeout=10)
            if r.status_code == 200:
                tokenizer = server_tokenizer(args.url, args.api_key)
                return tokenizer, "server /v1/tokenize", r.json().get("max_model_len")
        except httpx.HTTPError:
            pass
        if args.tokenizer == "server":
            raise SystemExit(f"error: {args.url}/v1/tokenize did not answer; try --tokenizer local")
    return local_tokenizer(), "local model/weights/gpt", None


# ---- reports ------------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    """Seconds as milliseconds; '-' for a statistic of no values (NaN, or None when read back from JSON)."""
    return "-" if value is None or math.isnan(value) else f"{value * 1e3:,.1f}"


def _msf(value: float | None) -> float:
    return float("nan") if value is None else value * 1e3


def text_report(s: dict[str, Any]) -> str:
    cfg = s["config"]
    load = f"request rate {cfg['request_rate']}/s" if cfg["request_rate"] else f"concurrency {cfg['concurrency']}"
    lines = [
        f"{' tinyserve bench: ' + cfg['endpoint'] + ', ' + load + ' ':=^60}",
        f"{'Successful requests:':<44}{s['completed']:>16}",
        f"{'Failed requests:':<44}{s['failed']:>16}",
    ]
    lines += [f"  {kind + ':':<42}{n:>16}" for kind, n in sorted(s["failures"].items())]
    lines += [
        f"{'Benchmark duration (s):':<44}{s['duration_s']:>16.2f}",
        f"{'Request throughput (req/s):':<44}{s['request_throughput']:>16.2f}",
    ]
    if cfg["endpoint"] == "completions":
        lines += [
            f"{'Total output tokens:':<44}{s['output_tokens']:>16}",
            f"{'Output token throughput (tok/s):':<44}{s['output_throughput']:>16.1f}",
        ]
        sections = [("ttft_s", "TTFT", "Time to First Token"), ("tpot_s", "TPOT", "Time per Output Token (excl. 1st)")]
        sections += [("itl_s", "ITL", "Inter-token Latency"), ("e2el_s", "E2EL", "End-to-end Latency")]
    else:
        sections = [("e2el_s", "latency", "Request latency")]
    for key, short, title in sections:
        lines.append(f"{' ' + title + ' ':-^60}")
        for stat in ("mean", "median", "p90", "p99"):
            lines.append(f"{f'{stat.capitalize()} {short} (ms):':<44}{_ms(s[key][stat]):>16}")
    lines.append("=" * 60)
    return "\n".join(lines)


def _failures(s: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())) or "0"


def markdown_table(levels: Sequence[dict[str, Any]]) -> str:
    """One row per level: the figures a latency-vs-throughput decision needs."""
    completions = levels[0]["config"]["endpoint"] == "completions"
    if completions:
        head = (
            "| concurrency | ok | req/s | output tok/s | TTFT median / p99 ms | TPOT median / p99 ms "
            "| ITL median / p99 ms | E2EL median / p99 ms | failures |\n|" + "---:|" * 8 + "---|"
        )
    else:
        head = "| concurrency | ok | req/s | latency mean / median / p90 / p99 ms | failures |\n"
        head += "|" + "---:|" * 4 + "---|"
    rows = [head]
    for s in levels:
        c = s["config"]["concurrency"]
        if completions:
            cells = [
                f"{s['output_throughput']:,.0f}",
                *(f"{_ms(s[k]['median'])} / {_ms(s[k]['p99'])}" for k in ("ttft_s", "tpot_s", "itl_s", "e2el_s")),
            ]
        else:
            lat = s["e2el_s"]
            cells = [" / ".join(_ms(lat[k]) for k in ("mean", "median", "p90", "p99"))]
        rows.append(
            f"| {c} | {s['completed']} | {s['request_throughput']:,.1f} | " + " | ".join(cells) + f" | {_failures(s)} |"
        )
    return "\n".join(rows) + "\n"


def log_axis(ax: Any) -> None:
    """A log y axis labelled 1, 2, 5, 10, 20, ... in plain numbers (the default 2x10^1 is hard to read)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_sweep(levels: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Latency against throughput, one point per level, labelled with its concurrency."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    completions = levels[0]["config"]["endpoint"] == "completions"
    if completions:
        x = [s["output_throughput"] for s in levels]
        xlabel = "output tokens/s"
        panels = [("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2el_s", "E2EL")]
    else:
        x = [s["request_throughput"] for s in levels]
        xlabel = "requests/s"
        panels = [("e2el_s", "latency")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels, strict=True):
        for stat, style in (("median", "o-"), ("p99", "s--")):
            ax.plot(x, [_msf(s[key][stat]) for s in levels], style, label=f"{name} {stat}")
        for xi, s in zip(x, levels, strict=True):
            ax.annotate(
                f"c={s['config']['concurrency']}",
                (xi, _msf(s[key]["median"])),
                fontsize=8,
                textcoords="offset points",
                xytext=(4, 4),
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{name} (ms)")
        log_axis(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title or f"{levels[0]['config']['endpoint']}: latency against throughput")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- running ------------------------------------------------------------------------------------------------------


def run_level(cfg: LoadConfig, progress: bool, desc: str) -> dict[str, Any]:
    bar = tqdm(total=cfg.num_requests, desc=desc, unit="req", file=sys.stderr, disable=not progress, leave=False)
    failed = 0

    def tick(res: Result) -> None:
        nonlocal failed
        failed += not res.ok
        bar.update(1)
        if failed:
            bar.set_postfix(failed=failed)

    try:
        return asyncio.run(run_load(cfg, on_result=tick))
    finally:
        bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    base = LoadConfig(
        url=args.url.rstrip("/"),
        endpoint=args.endpoint,
        concurrency=args.concurrency if args.concurrency or args.request_rate else 8,
        request_rate=args.request_rate,
        num_requests=args.num_requests,
        duration_s=args.duration,
        timeout_s=args.timeout,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        warmup=args.warmup,
        seed=args.seed,
        model=args.model,
        api_key=args.api_key,
    )
    meta: dict[str, Any] = {"url": base.url, "endpoint": args.endpoint}
    if args.endpoint == "completions":
        token_texts, tokenizer_name, max_len = pick_tokenizer(args)
        if max_len is not None and args.prompt_tokens + args.max_tokens > max_len:
            parser.error(f"--prompt-tokens + --max-tokens exceeds the server's context of {max_len} tokens")
        base.prompts = build_prompts(token_texts, args.prompt_tokens, args.num_prompts)
        measured = [len(token_texts(p)) for p in base.prompts]
        meta |= {"tokenizer": tokenizer_name, "prompt_tokens": sum(measured) / len(measured)}
        meta |= {"max_tokens": args.max_tokens, "num_prompts": len(base.prompts)}
    progress = not args.no_progress

    if not args.sweep:
        summary = run_level(base, progress, "requests")
        if args.json:
            print(json.dumps(jsonable({**meta, **summary}), indent=2))
        else:
            print(text_report(summary))
        return 0 if summary["completed"] else 1

    levels = []
    for c in args.sweep:
        cfg = dataclasses.replace(base, concurrency=c)
        levels.append(run_level(cfg, progress, f"c={c}"))
        if not args.json:
            s = levels[-1]
            print(
                f"c={c}: {s['request_throughput']:.1f} req/s, {s['output_throughput']:.0f} tok/s, "
                f"failures {_failures(s)}",
                file=sys.stderr,
            )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table, plot = out / "sweep.md", out / "sweep.png"
    table.write_text(markdown_table(levels))
    plot_sweep(levels, plot)
    result = {**meta, "levels": levels, "table": str(table), "plot": str(plot)}
    (out / "sweep.json").write_text(json.dumps(jsonable(result), indent=2))
    if args.json:
        print(json.dumps(jsonable(result), indent=2))
    else:
        print(markdown_table(levels))
        print(f"wrote {table}, {plot} and {out / 'sweep.json'}")
    return 0 if all(s["completed"] for s in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
