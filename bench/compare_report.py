"""docs/performance.md from `bench.compare`'s figures: the tables, the plots and the raw JSON beside them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.__main__ import log_axis, markdown_table, plot_sweep
from bench.loadgen import jsonable

# Display names, in table order.
TINYSERVE = "tinyserve"
ENGINE = "raw engine (no HTTP)"
NAIVE = "naive FastAPI + generate"
HF = "transformers serve"
HF_CB = "transformers serve --continuous-batching"
TARGETS = [TINYSERVE, ENGINE, NAIVE, HF, HF_CB]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:,.1f}x" if r >= 10 else f"{r:,.2f}x"


def _get(data: dict[str, Any], target: str, c: int, *path: str) -> float | None:
    value: Any = data["results"].get(target, {}).get(str(c))
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if value is not None else None


def plot_compare(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    levels = data["settings"]["levels"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target in TARGETS:
        if target not in data["results"]:
            continue
        tps = [_get(data, target, c, "output_throughput") for c in levels]
        ttft = [_get(data, target, c, "ttft_s", "median") for c in levels]
        ax1.plot(levels, [v or float("nan") for v in tps], "o-", label=target)
        ax2.plot(levels, [v * 1e3 if v is not None else float("nan") for v in ttft], "o-", label=target)
    for ax, ylabel in ((ax1, "output tokens/s"), (ax2, "TTFT median (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        log_axis(ax)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle("Same GPT, same prompt, streamed, greedy: throughput and time to first token")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(data: dict[str, Any], doc: Path) -> str:
    """docs/performance.md from the measured data; every figure in it comes from `data`."""
    m, st = data["machine"], data["settings"]
    levels: list[int] = st["levels"]
    present = [t for t in TARGETS if t in data["results"]]
    hi = max(levels)
    assets = doc.parent / "performance"
    rel = f"{assets.name}"
    head = "| server | " + " | ".join(f"c={c}" for c in levels) + " |\n|---|" + "---:|" * len(levels)

    def row(target: str, cell: Callable[[int], str]) -> str:
        return f"| {target} | " + " | ".join(cell(c) for c in levels) + " |"

    def tps(t: str) -> Callable[[int], str]:
        def cell(c: int) -> str:
            v = _get(data, t, c, "output_throughput")
            return "-" if v is None else f"{v:,.0f}"

        return cell

    def ttft(t: str) -> Callable[[int], str]:
        def cell(c: int) -> str:
            med, p99 = _get(data, t, c, "ttft_s", "median"), _get(data, t, c, "ttft_s", "p99")
            if med is None or p99 is None or math.isnan(med):
                return "-"
            return f"{med * 1e3:,.1f} / {p99 * 1e3:,.1f}"

        return cell

    def per_request(t: str) -> Callable[[int], str]:
        def cell(c: int) -> str:
            r = data["results"][t].get(str(c), {})
            done = r.get("completed")
            if done is None:  # the raw engine reports tokens only
                n = st["requests"][str(c)]
                return f"{r.get('output_tokens', 0) / n:.1f}" if r else "-"
            fails = sum(r.get("failures", {}).values())
            per = r["output_tokens"] / done if done else 0.0
            return f"{per:.1f}" + (f" ({fails} failed)" if fails else "")

        return cell

    lines = [
        "# Performance",
        "",
        f"Written by `make bench-compare` (`python -m bench.compare`) on {m['date']}; do not edit by hand, run it "
        "again. The raw figures are in [performance/compare.json](performance/compare.json).",
        "",
        "## Method",
        "",
        f"- **Work**: one prompt of {st['prompt_tokens']} tokens (a window of the fixed passage in "
        f"`bench/prompts.py`), `max_tokens` {st['max_tokens']}, greedy (`temperature` 0), streamed, generation "
        "stopping early only at the end-of-text token. The same weights (`model/weights/gpt`) everywhere.",
        "- **Load**: a closed loop of *c* requests in flight (`bench.loadgen`, asyncio + aiohttp on the same machine), "
        "2 warm-up requests per level, then "
        + ", ".join(f"{st['requests'][str(c)]} requests at c={c}" for c in levels)
        + f" (no request starts after {st['level_seconds']:.0f} s).",
        "- **Definitions** (those of `vllm bench serve`): output tokens/s = completion tokens of successful "
        "requests / wall time of the level; TTFT = from just before the POST to the first chunk carrying text; "
        "medians and p99 with linear interpolation.",
        "- **Servers**, started one at a time on 127.0.0.1, "
        + (
            f"each with {_n(st['threads'], 'torch thread')} (tinyserve's default; `--threads 0` leaves every "
            "server its own default):"
            if st.get("threads")
            else "each with its own defaults (torch threads: tinyserve's GPT worker "
            f"{st['tinyserve_threads']}, its setting `TINYSERVE_TORCH_THREADS`; the others torch's default, "
            f"{st['torch_default_threads']} here):"
        ),
        f"  - *tinyserve*: `python -m service` (continuous batching of up to {st['tinyserve_batch']} sequences).",
        "  - *raw engine*: `model.engine.Engine` driven in-process by `bench.serve.raw_engine` (no HTTP, no "
        f"tokenizer, no client, {_n(st['engine_threads'], 'torch thread')}, the server's prefill budget): the "
        "ceiling. Its TTFT counts from `add_request`.",
        "  - *naive FastAPI + generate*: `bench/naive_app.py`, the app a user writes first: a sync handler per "
        "request starting `model.generate` in a thread with a `TextIteratorStreamer` (streaming, so TTFT is the "
        "first text it yields; the streamer holds text back to a word boundary, as users see it).",
        "  - *transformers serve*: the Hugging Face CLI's OpenAI-compatible server (`transformers serve "
        "model/weights/gpt --device cpu`, its `/v1/completions`), with its defaults: one `generate` at a time on "
        "one inference thread. Then the same with `--continuous-batching` (paged attention).",
        "",
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {'CUDA' if m['cuda'] else 'no GPU'}; "
        f"{m['os']}; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"LitServe {m['litserve']}. Load average at the start: "
        + " / ".join(f"{x:.2f}" for x in m["load_average_at_start"])
        + ". Client and server share the cores, as they would in a sidecar load test."
        + (
            " 1-minute load average before / after each server's run: "
            + "; ".join(f"{t} {a:.1f} / {b:.1f}" for t, (a, b) in data["load"].items())
            + "."
            if data.get("load")
            else ""
        ),
        "",
        "## Output tokens/s",
        "",
        head,
        *(row(t, tps(t)) for t in present),
        "",
        "## TTFT median / p99 (ms)",
        "",
        head,
        *(row(t, ttft(t)) for t in present),
        "",
        "Mean output tokens per request (all servers run the same greedy decoding; a count below `max_tokens` is "
        "the end-of-text token):",
        "",
        head,
        *(row(t, per_request(t)) for t in present),
        "",
        "## tinyserve against each",
        "",
        "Output tokens/s of tinyserve divided by the other's, and the other's TTFT median divided by tinyserve's "
        "(above 1: tinyserve is better on both).",
        "",
        "| against | "
        + " | ".join(f"tok/s c={c}" for c in levels)
        + " | "
        + " | ".join(f"TTFT c={c}" for c in levels)
        + " |\n|---|"
        + "---:|" * (2 * len(levels)),
    ]
    for t in present:
        if t == TINYSERVE:
            continue
        tok = [
            _x(_ratio(_get(data, TINYSERVE, c, "output_throughput"), _get(data, t, c, "output_throughput")))
            for c in levels
        ]
        lat = [
            _x(_ratio(_get(data, t, c, "ttft_s", "median"), _get(data, TINYSERVE, c, "ttft_s", "median")))
            for c in levels
        ]
        lines.append(f"| {t} | " + " | ".join(tok + lat) + " |")
    lines += ["", f"Goals at c={hi} (output tokens/s):", ""]
    for target, goal in ((NAIVE, 10.0), (HF, 2.0), (HF_CB, 2.0)):
        r = _ratio(_get(data, TINYSERVE, hi, "output_throughput"), _get(data, target, hi, "output_throughput"))
        verdict = "not measured" if r is None else ("met" if r >= goal else "**not met**")
        lines.append(f"- at least {goal:g}x {target}: {_x(r)}, {verdict}")
    lines += ["", f"![throughput and TTFT]({rel}/compare.png)", ""]
    if data.get("sweep"):
        lines += [
            "## tinyserve: latency against throughput",
            "",
            "The same prompt and `max_tokens`, tinyserve alone, one level after another (`python -m bench --sweep`"
            " gives the same table and plot for any running server).",
            "",
            markdown_table(data["sweep"]).rstrip(),
            "",
            f"![latency against throughput]({rel}/sweep.png)",
            "",
        ]
    if data["errors"]:
        lines += ["## Not measured", ""]
        lines += [f"- {t}: {why}" for t, why in data["errors"].items()]
        lines.append("")
    return "\n".join(lines)


def write(data: dict[str, Any], doc: Path) -> None:
    assets = doc.parent / "performance"
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "compare.json").write_text(json.dumps(jsonable(data), indent=2) + "\n")
    plot_compare(data, assets / "compare.png")
    if data.get("sweep"):
        plot_sweep(data["sweep"], assets / "sweep.png", "tinyserve: latency against throughput")
    doc.write_text(render(data, doc))
