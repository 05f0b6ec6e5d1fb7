"""Engine throughput against `model.generate` (`python -m bench.engine`): a report, it never fails on time.

Both decode the same prompts (32 tokens, 64 new) at each batch size in the same run, greedy and sampling with
top-k (and, with `--modes ...,controls`, top-k with every sampling control on: min-p, the three penalties, logit
bias and min_tokens; generate gets those it has), interleaved repeat by repeat so that a noisy machine slows both
alike; figures are medians. Tokens/s
counts new tokens over the whole call, prefill included. The step split times the engine's model forward and
its sampling; the rest of a step is bookkeeping (admission, events, slot moves). Last, one decode step at batch 1
op by op (bench/step_profile.py).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from bench.step_profile import table as step_table
from model.engine import Engine, SamplingParams
from model.gpt import GPT_DIR, count_parameters, gpt_config, load_gpt, pick_dtype

PROMPT_TOKENS = 32
NEW_TOKENS = 64
TOP_K = 50
MODES = ("greedy", "top-k", "controls")
# The controls mode: each with a value that changes the logits of every row, every step.
MIN_P, REPETITION, MIN_TOKENS = 0.02, 1.2, 16


@dataclass
class Split:
    steps: int = 0
    forward_s: float = 0.0
    sample_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Cell:
    """Repeats of one (batch, mode): tokens/s of each side, and the engine's step split."""

    engine: list[float] = field(default_factory=list)
    generate: list[float] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=GPT_DIR, help="shipped model folder (random model if missing)")
    p.add_argument("--batches", default="1,4,16,32,64", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="repeats per cell; the median is reported")
    p.add_argument("--budget", type=float, default=150.0, help="seconds after which no new repeat starts")
    p.add_argument("--quick", action="store_true", help="batches 1 and 64, three repeats")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 there, as the server runs it)")
    p.add_argument("--modes", default="greedy,top-k", help=f"comma-separated, of {', '.join(MODES)}")
    return p.parse_args(argv)


def load_model(folder: Path, device: str = "cpu") -> tuple[GPT2LMHeadModel, str]:
    if (folder / "config.json").exists():
        return load_gpt(folder, device), f"trained model from `{folder}`"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt_config(vocab_size=4096)).eval()
    model.to(torch.device(device), pick_dtype(torch.device(device)))  # type: ignore[arg-type]  # as in load_gpt
    return (
        model,
        f"**RANDOM weights** (no model at `{folder}`), shipped shape: 4 layers, 4 heads, width 192, ctx 256",
    )


def params_for(mode: str) -> SamplingParams:
    if mode == "greedy":
        return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    if mode == "controls":
        bias = tuple((t, 1.0) for t in range(1, 11))
        return SamplingParams(
            max_tokens=NEW_TOKENS, temperature=1.0, top_k=TOP_K, min_p=MIN_P, repetition_penalty=REPETITION,
            frequency_penalty=0.5, presence_penalty=0.3, logit_bias=bias, min_tokens=MIN_TOKENS, stop_token_ids=(0,),
        )  # fmt: skip
    return SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, top_k=TOP_K)


def generate_kwargs(mode: str) -> dict[str, Any]:
    if mode == "greedy":
        return {"do_sample": False}
    if mode == "controls":  # generate has no frequency or presence penalty
        return {"do_sample": True, "top_k": TOP_K, "min_p": MIN_P, "repetition_penalty": REPETITION,
                "min_new_tokens": MIN_TOKENS}  # fmt: skip
    return {"do_sample": True, "top_k": TOP_K}


def timed(fn: Callable[..., Any], split: Split, attr: str, sync: Callable[[], None]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        setattr(split, attr, getattr(split, attr) + time.perf_counter() - t0)
        return out

    return wrapper


def run_engine(
    model: GPT2LMHeadModel, prompts: torch.Tensor, mode: str, sync: Callable[[], None]
) -> tuple[float, Split]:
    engine = Engine(model, max_batch_size=len(prompts))
    split = Split()
    # Instance attributes shadow the methods: the split costs two clock reads per call, nothing else.
    engine._forward = timed(engine._forward, split, "forward_s", sync)  # type: ignore[method-assign]
    engine._sample = timed(engine._sample, split, "sample_s", sync)  # type: ignore[method-assign]
    params = params_for(mode)
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts.tolist()):
        engine.add_request(str(i), prompt, params)
    produced = 0
    while engine.has_work():
        produced += sum(ev.token_id is not None for ev in engine.step())
        split.steps += 1
    split.total_s = time.perf_counter() - t0
    return produced / split.total_s, split


def run_generate(model: GPT2LMHeadModel, prompts: torch.Tensor, mode: str, sync: Callable[[], None]) -> float:
    kwargs = generate_kwargs(mode)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=NEW_TOKENS,
            pad_token_id=0,
            temperature=1.0,
            **kwargs,
        )
    sync()
    # Rows that stopped at EOS early are padded; count the positions generate actually ran.
    return len(prompts) * (out.shape[1] - prompts.shape[1]) / (time.perf_counter() - t0)


def others_cpu_s() -> float:
    """CPU seconds the whole machine has been busy, minus this process's own; NaN where /proc/stat is absent."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return math.nan
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy - own.ru_utime - own.ru_stime


def report(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    model, label = load_model(args.model_dir, args.device)
    device = next(model.parameters()).device
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = [1, 64] if args.quick else [int(b) for b in args.batches.split(",")]
    repeats = 3 if args.quick else args.repeats
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        raise SystemExit(f"--modes: choose among {', '.join(MODES)}")
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(1, vocab, (b, PROMPT_TOKENS), generator=gen).to(device) for b in batches}

    for mode in modes:  # warm-up: first calls pay for allocations and lazy imports
        run_engine(model, prompts[batches[0]], mode, sync)
        run_generate(model, prompts[batches[0]], mode, sync)
    cells = {(b, m): Cell() for b in batches for m in modes}
    others_before = others_cpu_s()
    start = time.perf_counter()
    done = 0
    for rep in range(repeats):
        if rep and time.perf_counter() - start > args.budget:
            break
        for b in batches:
            for mode in modes:
                cell = cells[b, mode]
                # Alternate which side goes first so a slow phase of the machine does not favour one.
                if rep % 2:
                    cell.generate.append(run_generate(model, prompts[b], mode, sync))
                tokens_s, split = run_engine(model, prompts[b], mode, sync)
                cell.engine.append(tokens_s)
                cell.splits.append(split)
                if not rep % 2:
                    cell.generate.append(run_generate(model, prompts[b], mode, sync))
        done += 1
    elapsed = time.perf_counter() - start
    others = others_cpu_s() - others_before

    med = statistics.median
    lines = [
        "# Engine vs `model.generate`",
        "",
        f"- Model: {label}; {count_parameters(model) / 1e6:.2f}M parameters, {model.dtype}, {device}.",
        f"- Prompt {PROMPT_TOKENS} tokens, {NEW_TOKENS} new tokens a request; sampling: temperature 1,"
        f" top-k {TOP_K}. Tokens/s: new tokens over the whole call, prefill included.",
        f"- torch {torch.__version__}, {args.threads} threads, {platform.machine()}; medians of {done}"
        f" repeat(s) in {elapsed:.0f} s; a ratio is the median of (engine / generate) over paired runs.",
        f"- Other processes used {others / elapsed:.2f} of {os.cpu_count()} cores meanwhile"
        + (": the figures are noisy." if not others / elapsed <= 0.2 else " (a quiet machine)."),
        "",
        "| batch | " + " | ".join(f"engine {m} | generate {m} | ratio" for m in modes) + " |",
        "|---:|" + "---:|---:|---:|" * len(modes),
    ]
    ratios: dict[tuple[int, str], float] = {}
    for b in batches:
        row = [str(b)]
        for mode in modes:
            cell = cells[b, mode]
            # The median of paired ratios: a slow phase of the machine hits both runs of a pair alike.
            ratios[b, mode] = med(e / g for e, g in zip(cell.engine, cell.generate, strict=True))
            row += [f"{med(cell.engine):,.0f}", f"{med(cell.generate):,.0f}", f"{ratios[b, mode]:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Engine step split (ms a step, medians; prefill steps included, so a step averages over both kinds):",
        "",
        "| batch | mode | steps | step | model forward | sampling | bookkeeping |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for b in batches:
        for mode in modes:
            splits = cells[b, mode].splits
            step = med(s.total_s / s.steps for s in splits) * 1e3
            fwd = med(s.forward_s / s.steps for s in splits) * 1e3
            smp = med(s.sample_s / s.steps for s in splits) * 1e3
            cols = [str(b), mode, str(splits[0].steps)] + [f"{ms:.2f}" for ms in (step, fwd, smp, step - fwd - smp)]
            lines.append("| " + " | ".join(cols) + " |")
    lines.append("")
    goals = [(1, 2.0), (64, 1.2)]
    for b, goal in goals:
        if b in batches:
            plain = [m for m in modes if m != "controls"]  # the goals are the plain modes'
            got = ", ".join(f"{mode} {ratios[b, mode]:.2f}x" for mode in plain)
            met = all(ratios[b, mode] >= goal for mode in plain)
            lines.append(f"- Goal at batch {b}: engine >= {goal}x generate: {got} -> {'met' if met else 'NOT met'}.")
    lines += ["", step_table(model)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    print(report(parse_args(argv)))


if __name__ == "__main__":
    main()
