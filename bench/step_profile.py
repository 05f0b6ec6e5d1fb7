"""Where one decode step at batch 1 spends its time, op by op (torch.profiler), grouped into a short table.

`python -m bench.step_profile`; `make bench-engine` prints the same table after its own. The step is timed without
the profiler first (the profiler adds its own cost to every op); the groups are the profiler's self times, scaled
to that step, and "Python and dispatch" is what no op accounts for.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import GPT2LMHeadModel

from model.engine import Engine, SamplingParams

PROMPT_TOKENS = 32
# aten op -> group; ops not listed are views, copies and small glue, counted as "other ops".
GROUPS = {
    "aten::addmm": "matrix products (16 a step)",
    "aten::mm": "head (vocabulary) product",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_efficient_attention_forward": "attention",
    "aten::_flash_attention_forward": "attention",
    "aten::native_layer_norm": "layer norms",
    "aten::gelu": "GELU",
    "aten::argmax": "sampling (greedy)",
    "aten::copy_": "cache writes and copies",
    "aten::index_put_": "cache writes and copies",
    "aten::embedding": "embeddings",
    "aten::index_select": "embeddings",
}


def decode_steps(model: GPT2LMHeadModel, steps: int) -> tuple[Engine, list[float]]:
    """An engine with one greedy request past its prefill, and the wall time of `steps` decode steps."""
    engine = Engine(model, max_batch_size=1)
    engine.add_request("p", list(range(1, PROMPT_TOKENS + 1)), SamplingParams(max_tokens=steps * 3, temperature=0.0))
    engine.prefill()
    for _ in range(steps // 4):  # warm-up
        engine.decode()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.decode()
        times.append(time.perf_counter() - t0)
    return engine, times


def breakdown(model: GPT2LMHeadModel, steps: int = 64) -> tuple[float, dict[str, float]]:
    """The median decode step (ms) and each group's share of it (ms), the rest as "Python and dispatch"."""
    engine, times = decode_steps(model, steps)
    step_ms = statistics.median(times) * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.decode()
        profiled_ms = (time.perf_counter() - t0) * 1e3 / steps
    groups: dict[str, float] = {}
    for ev in prof.key_averages():
        name = GROUPS.get(ev.key, "other ops (views, small glue)")
        groups[name] = groups.get(name, 0.0) + ev.self_cpu_time_total / 1e3 / steps
    # The profiler slows the whole step: scale the groups by the step's time without it over its time with it.
    scale = step_ms / max(profiled_ms, sum(groups.values()))
    out = {k: v * scale for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
    out["Python and dispatch"] = max(0.0, step_ms - sum(out.values()))
    return step_ms, out


def table(model: GPT2LMHeadModel, steps: int = 64, threads: int = 1) -> str:
    """The breakdown as a markdown table, measured with `threads` torch threads (the server's default is one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step_ms, parts = breakdown(model, steps)
    finally:
        torch.set_num_threads(before)
    lines = [
        f"Decode step at batch 1, op by op ({threads} thread(s), {steps} steps, median step {step_ms:.3f} ms):",
        "",
        "| part | ms a step | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {ms:.3f} | {ms / step_ms:.0%} |" for name, ms in parts.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from bench.engine import load_model
    from model.gpt import GPT_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=GPT_DIR)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=64)
    args = p.parse_args(argv)
    model, _ = load_model(args.model_dir)
    print(table(model, args.steps, args.threads))


if __name__ == "__main__":
    main()
