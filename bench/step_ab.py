"""The engine's decode step of this tree against a git revision's, interleaved in one process (`python -m
bench.step_ab --base REV`): the same model, the same greedy requests, the same tokens (checked), step times as
medians and the new/old ratio as the median of paired repeats. A report, never a test.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import torch
from transformers import GPT2LMHeadModel

from model.gpt import GPT_DIR

# The engine's modules: copied from the revision into a package of another name, their imports renamed.
ENGINE_MODULES = ("engine", "gpt2_forward", "logits", "sampling")


def engine_at(revision: str, folder: Path) -> ModuleType:
    """`model.engine` as it was at `revision`, importable beside today's."""
    package = folder / "base_engine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ENGINE_MODULES:
        source = subprocess.run(
            ["git", "show", f"{revision}:model/{name}.py"], check=True, capture_output=True, text=True
        ).stdout
        for other in ENGINE_MODULES:
            source = source.replace(f"from model.{other} ", f"from base_engine.{other} ")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module("base_engine.engine")


def decode_run(module: ModuleType, model: GPT2LMHeadModel, batch: int, steps: int) -> tuple[float, list[int]]:
    """Median decode step (s) of `batch` greedy requests (prompts of 29 to 32 tokens) and the tokens they drew."""
    engine = module.Engine(model, max_batch_size=batch)
    for i in range(batch):
        params = module.SamplingParams(max_tokens=steps + 1, temperature=0.0)
        engine.add_request(str(i), list(range(1 + i, 33 + i - i % 4)), params)  # uneven: the masked path
    engine.prefill()
    times, tokens = [], []
    while engine.has_work():
        t0 = time.perf_counter()
        events = engine.decode()
        times.append(time.perf_counter() - t0)
        tokens += [ev.token_id for ev in events]
    return statistics.median(times), tokens


# Requests whose outputs must not change: greedy with logprobs and prompt logprobs, seeded top-k, seeded penalties.
CHECKS = (
    {"temperature": 0.0, "logprobs": 5, "prompt_logprobs": 3},
    {"temperature": 0.9, "top_k": 20, "seed": 7, "logprobs": 2},
    {"temperature": 1.0, "seed": 11, "logprobs": 1, "repetition_penalty": 1.3, "frequency_penalty": 0.5},
)


def outputs(module: ModuleType, model: GPT2LMHeadModel, params: Mapping[str, object]) -> list[tuple[object, ...]]:
    """Every event of six requests of uneven lengths (joining together, then decoding as a batch)."""
    engine = module.Engine(model, max_batch_size=8)
    for i in range(6):
        engine.add_request(str(i), list(range(1 + i, 20 + 3 * i)), module.SamplingParams(max_tokens=40, **params))
    events: list[tuple[object, ...]] = []
    while engine.has_work():
        events += [(e.request_id, e.token_id, e.logprob, e.top_logprobs, e.prompt_logprobs) for e in engine.step()]
    return events


def main(argv: list[str] | None = None) -> None:
    from bench.engine import load_model
    from model import engine as new

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="main", help="the git revision to compare against")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--model-dir", type=Path, default=GPT_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, label = load_model(args.model_dir)
    with tempfile.TemporaryDirectory(prefix="tinyserve-base-") as folder:
        old = engine_at(args.base, Path(folder))
        print(f"Decode step, this tree vs {args.base}: {label}, {args.threads} thread(s), {args.repeats} repeats")
        same = all(outputs(old, model, params) == outputs(new, model, params) for params in CHECKS)
        print(f"Tokens, logprobs and prompt logprobs (greedy, seeded top-k, seeded penalties): identical: {same}")
        print("\n| batch | old ms | new ms | new / old (median, range) |\n|---:|---:|---:|---|")
        for batch in [int(b) for b in args.batches.split(",")]:
            for module in (old, new):  # warm-up
                decode_run(module, model, batch, args.steps)
            olds, news, ratios = [], [], []
            for rep in range(args.repeats):
                order = (old, new) if rep % 2 == 0 else (new, old)  # alternate who goes first
                runs = {m: decode_run(m, model, batch, args.steps) for m in order}
                if runs[old][1] != runs[new][1]:
                    raise SystemExit(f"batch {batch}: the two engines drew different tokens")
                olds.append(runs[old][0])
                news.append(runs[new][0])
                ratios.append(runs[new][0] / runs[old][0])
            med = statistics.median
            print(
                f"| {batch} | {med(olds) * 1e3:.3f} | {med(news) * 1e3:.3f} | {med(ratios):.2f}x"
                f" ({min(ratios):.2f}-{max(ratios):.2f}) |"
            )


if __name__ == "__main__":
    main()
