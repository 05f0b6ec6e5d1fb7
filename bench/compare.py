"""`make bench-compare`: tinyserve against the raw engine, a naive FastAPI app and `transformers serve`, in one run.

Every HTTP server runs alone on a free loopback port, one after the other, with the same weights (model/weights/gpt),
the same prompt, each with its own default settings (or the same torch threads, with --threads), and is driven by
the same client (`bench.loadgen`: closed loop, streamed
completions, greedy, vLLM's definitions) at each concurrency level. The raw engine runs in this process as a closed
loop of the same size (`bench.serve.raw_engine`): the ceiling without HTTP. Then a concurrency sweep of tinyserve
alone gives its latency-against-throughput curve. The command writes docs/performance.md with its tables and plots,
and the raw figures as JSON beside them; `--from-json` redraws the page from such a file without measuring again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compare_report import ENGINE, HF, HF_CB, NAIVE, TARGETS, TINYSERVE, write
from bench.loadgen import LoadConfig, run_load
from bench.process import free_port, launched
from bench.prompts import build_prompts, local_tokenizer
from bench.serve import raw_engine, serving

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "model" / "weights" / "gpt"

KEYS = dict(zip(["tinyserve", "engine", "naive", "hf", "hf-cb"], TARGETS, strict=True))  # names for --skip


def machine() -> dict[str, Any]:
    import litserve
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "litserve": litserve.__version__,
        "cuda": torch.cuda.is_available(),
        "load_average_at_start": os.getloadavg(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def tinyserve_default(name: str) -> int:
    from service.settings import Settings

    return int(Settings.model_fields[name].default)


def torch_default_threads() -> int:
    """What torch picks in a fresh process without OMP_NUM_THREADS: one thread per physical core."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def measure_http(url: str, levels: list[int], prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in levels:
        cfg = LoadConfig(
            url=url,
            concurrency=c,
            num_requests=requests_at(c, args),
            duration_s=args.level_seconds,
            timeout_s=args.timeout,
            prompts=[prompt],
            max_tokens=args.max_tokens,
            temperature=0.0,
            warmup=2,
        )
        out[str(c)] = asyncio.run(run_load(cfg))
        s = out[str(c)]
        print(
            f"  c={c}: {s['output_throughput']:.0f} tok/s, TTFT p50 {s['ttft_s']['median'] * 1e3:.1f} ms, "
            f"failures {s['failures'] or 0}",
            flush=True,
        )
    return out


def requests_at(c: int, args: argparse.Namespace) -> int:
    return max(args.min_requests, args.requests_per_slot * c)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is None:
        # The same torch threads for every server, tinyserve's default: on a small machine where the client shares
        # the cores, the baselines can be faster with fewer threads than torch's default, so giving them the same
        # count is the fair comparison; --threads 0 leaves each server its own default instead.
        args.threads = tinyserve_default("torch_threads")
    levels = [int(c) for c in args.concurrency.split(",")]
    sweep = [int(c) for c in args.sweep.split(",")] if args.sweep else []
    token_texts = local_tokenizer(WEIGHTS)
    prompt = build_prompts(token_texts, args.prompt_tokens, 1)[0]
    data: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "levels": levels,
            "prompt": prompt,
            "prompt_tokens": len(token_texts(prompt)),
            "max_tokens": args.max_tokens,
            "threads": args.threads,  # None: each server's own default
            "tinyserve_threads": args.threads or tinyserve_default("torch_threads"),
            "torch_default_threads": torch_default_threads(),
            "engine_threads": args.engine_threads or args.threads or tinyserve_default("torch_threads"),
            "tinyserve_batch": tinyserve_default("gpt_max_batch_size"),
            "requests": {str(c): requests_at(c, args) for c in levels},
            "level_seconds": args.level_seconds,
            "sweep": sweep,
        },
        "results": {},
        "errors": {},
        "load": {},
    }
    threads_env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.threads:
        threads_env["OMP_NUM_THREADS"] = str(args.threads)
    skip = {KEYS[k] for k in args.skip}
    logs = Path(tempfile.mkdtemp(prefix="bench-compare-"))

    def attempt(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name in skip:
            data["errors"][name] = "skipped (--skip)"
            return
        print(f"{name}:", flush=True)
        before = os.getloadavg()[0]
        try:
            data["results"][name] = fn()
            # Other work on the machine skews a run: keep the 1-minute load average around each one.
            data["load"][name] = [before, os.getloadavg()[0]]
        except Exception as exc:  # noqa: BLE001 - one baseline failing must not lose the others' figures
            data["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"  failed: {data['errors'][name]}", flush=True)

    def tinyserve() -> dict[str, Any]:
        env = {**threads_env, **({"TINYSERVE_TORCH_THREADS": str(args.threads)} if args.threads else {})}
        with serving(env) as server:
            out = measure_http(server.url, levels, prompt, args)
            if sweep:
                print("  sweep:", flush=True)
                data["sweep"] = [
                    m
                    for _, m in sorted(measure_http(server.url, sweep, prompt, args).items(), key=lambda kv: int(kv[0]))
                ]
        return out

    def engine() -> dict[str, Any]:
        import torch

        from model.engine import Engine, SamplingParams
        from model.gpt import eot_id, load_gpt, load_tokenizer

        torch.set_num_threads(data["settings"]["engine_threads"])
        tok = load_tokenizer(WEIGHTS)
        ids = tok.encode(prompt, add_special_tokens=False)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, stop_token_ids=(eot_id(tok),))
        # The server's own prefill budget, so the ceiling schedules as the server does.
        budget = tinyserve_default("gpt_max_prefill_tokens")
        eng = Engine(load_gpt(WEIGHTS), max_batch_size=max(levels), max_prefill_tokens=budget)
        raw_engine(eng, ids, params, 1, 2)  # warm-up
        out = {}
        for c in levels:
            out[str(c)] = raw_engine(eng, ids, params, c, requests_at(c, args))
            print(f"  c={c}: {out[str(c)]['output_throughput']:.0f} tok/s", flush=True)
        return out

    def naive() -> dict[str, Any]:
        port = free_port()
        argv = [sys.executable, "-m", "bench.naive_app", "--port", str(port)]
        env = {**os.environ, **threads_env, "NAIVE_WEIGHTS": str(WEIGHTS)}
        with launched(argv, port, env, logs / "naive.log") as server:
            return measure_http(server.url, levels, prompt, args)

    def hf(cb: bool) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
            if exe is None:
                raise RuntimeError("the `transformers` command is not installed (pip install 'transformers[serving]')")
            port = free_port()
            argv = [exe, "serve", str(WEIGHTS), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--log-level", "warning"] + (["--continuous-batching"] if cb else [])
            with launched(argv, port, {**os.environ, **threads_env}, logs / f"hf{'-cb' if cb else ''}.log") as server:
                return measure_http(server.url, levels, prompt, args)

        return go

    attempt(TINYSERVE, tinyserve)
    attempt(ENGINE, engine)
    attempt(NAIVE, naive)
    attempt(HF, hf(cb=False))
    attempt(HF_CB, hf(cb=True))
    return data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-slot", type=int, default=4, help="requests per level = this x concurrency")
    p.add_argument("--min-requests", type=int, default=16, help="at least this many requests per level")
    p.add_argument("--level-seconds", type=float, default=120.0, help="no request starts later in a level")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads of every server (default: tinyserve's; 0: their own)"
    )
    p.add_argument(
        "--engine-threads", type=int, default=None, help="torch threads of the raw engine (default: as tinyserve's)"
    )
    p.add_argument("--sweep", default="1,2,4,8,16,32,64", help="tinyserve sweep levels ('' for none)")
    p.add_argument("--skip", nargs="*", default=[], choices=list(KEYS), help="targets not to run")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "performance.md", help="the page to write")
    p.add_argument("--from-json", type=Path, default=None, help="redraw the page from a compare.json, measure nothing")
    args = p.parse_args(argv)
    data = json.loads(args.from_json.read_text()) if args.from_json else run(args)
    write(data, args.doc)
    print(f"wrote {args.doc} and {args.doc.parent / 'performance'}/")


if __name__ == "__main__":
    main()
