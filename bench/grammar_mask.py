"""What a grammar's token mask costs per decode step on this machine: first for each grammar library installed
(llguidance, xgrammar, outlines-core), compile time and the mask of every row at batch 1 and 32, each row walking its
own valid JSON; then, with the one the server uses (model/grammar.py), the engine's decode step with every row
constrained against none, interleaved. `python -m bench.grammar_mask`; a report, never a test. Figures:
docs/structured.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from bench.engine import load_model
from model.engine import Engine, SamplingParams
from model.gpt import GPT_DIR, eot_id, load_tokenizer, token_bytes
from model.grammar import Grammars, build_grammar

SCHEMA = {
    "type": "object",
    "properties": {
        "speaker": {"type": "string", "maxLength": 24},
        "mood": {"enum": ["merry", "wroth", "sad"]},
        "lines": {"type": "integer", "minimum": 1, "maximum": 99},
        "words": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["speaker", "mood", "lines", "words"],
    "additionalProperties": False,
}


# The engine's measure: an array of strings, so that no row finishes before the steps run out.
STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 64}


Clock = Callable[[], float]


class Row(Protocol):
    def fill(self, bitmask: torch.Tensor, index: int) -> None: ...
    def accept(self, token: int) -> None: ...
    def done(self) -> bool: ...


class Library(Protocol):
    def compile(self, schema: str) -> Any: ...
    def row(self, compiled: Any) -> Row: ...
    def fill_batch(self, rows: list[Row], bitmask: torch.Tensor) -> None: ...


def _llguidance(tok: PreTrainedTokenizerFast, vocab: int) -> Library:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    executor = llguidance.LLExecutor()

    class LLRow:
        def __init__(self, grammar: str) -> None:
            self.m = llguidance.LLMatcher(lltok, grammar)

        def fill(self, bitmask: torch.Tensor, index: int) -> None:
            llguidance.torch.fill_next_token_bitmask(self.m, bitmask, index)

        def accept(self, token: int) -> None:
            assert self.m.consume_token(token), self.m.get_error()

        def done(self) -> bool:
            return self.m.is_stopped() or self.m.is_accepting()

    class LLGuidance:
        def compile(self, schema: str) -> Any:
            return llguidance.LLMatcher.grammar_from_json_schema(schema)

        def row(self, compiled: Any) -> Row:
            return LLRow(compiled)

        def fill_batch(self, rows: list[Row], bitmask: torch.Tensor) -> None:
            pairs = [(r.m, i) for i, r in enumerate(rows)]  # type: ignore[attr-defined]
            llguidance.torch.fill_next_token_bitmask_par(executor, pairs, bitmask)

    return LLGuidance()


def _xgrammar(tok: PreTrainedTokenizerFast, vocab: int) -> Library:
    import xgrammar

    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=vocab))
    batch = xgrammar.BatchGrammarMatcher()

    class XRow:
        def __init__(self, compiled: Any) -> None:
            self.m = xgrammar.GrammarMatcher(compiled)

        def fill(self, bitmask: torch.Tensor, index: int) -> None:
            self.m.fill_next_token_bitmask(bitmask, index)

        def accept(self, token: int) -> None:
            assert self.m.accept_token(token)

        def done(self) -> bool:
            return bool(self.m.is_terminated() or self.m.is_completed())

    class XGrammar:
        def compile(self, schema: str) -> Any:
            return compiler.compile_json_schema(schema)

        def row(self, compiled: Any) -> Row:
            return XRow(compiled)

        def fill_batch(self, rows: list[Row], bitmask: torch.Tensor) -> None:
            batch.batch_fill_next_token_bitmask([r.m for r in rows], bitmask)  # type: ignore[attr-defined]

    return XGrammar()


def _outlines_core(tok: PreTrainedTokenizerFast, vocab: int) -> Library:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    eot = eot_id(tok)
    tokens: dict[bytes, list[int]] = {}
    for i in range(vocab):
        if i != eot:
            tokens.setdefault(token_bytes(tok, i), []).append(i)
    vocabulary = outlines_core.Vocabulary(eot, tokens)

    class ORow:
        def __init__(self, index: Any) -> None:
            self.g = outlines_core.Guide(index)

        def fill(self, bitmask: torch.Tensor, index: int) -> None:
            row = bitmask[index]
            self.g.write_mask_into(row.data_ptr(), row.numel(), row.element_size())

        def accept(self, token: int) -> None:
            self.g.advance(token)

        def done(self) -> bool:
            return bool(self.g.is_finished())

    class Outlines:
        def compile(self, schema: str) -> Any:
            return outlines_core.Index(build_regex_from_schema(schema), vocabulary)

        def row(self, compiled: Any) -> Row:
            return ORow(compiled)

        def fill_batch(self, rows: list[Row], bitmask: torch.Tensor) -> None:
            for i, r in enumerate(rows):
                r.fill(bitmask, i)

    return Outlines()


LIBRARIES: dict[str, tuple[str, Callable[[PreTrainedTokenizerFast, int], Library]]] = {
    "llguidance": ("llguidance", _llguidance),
    "xgrammar": ("xgrammar", _xgrammar),
    "outlines-core": ("outlines_core", _outlines_core),
}


def allowed(bitmask: torch.Tensor, index: int, vocab: int) -> list[int]:
    bits = bitmask[index].view(torch.uint8).numpy()
    import numpy as np

    return [int(t) for t in np.flatnonzero(np.unpackbits(bits, bitorder="little")[:vocab])]


def measure(
    lib: Library, compiled: Any, batch: int, steps: int, vocab: int, seed: int, clock: Clock
) -> tuple[float, float]:
    """Median seconds per step to fill every row's mask one by one, and with the library's batch call."""
    rng = random.Random(seed)
    bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    rows = [lib.row(compiled) for _ in range(batch)]
    one_by_one, batched = [], []
    for _ in range(steps):
        t0 = clock()
        for i, r in enumerate(rows):
            r.fill(bitmask, i)
        one_by_one.append(clock() - t0)
        t0 = clock()
        lib.fill_batch(rows, bitmask)
        batched.append(clock() - t0)
        for i, r in enumerate(rows):
            if r.done():
                rows[i] = r = lib.row(compiled)
                r.fill(bitmask, i)
            r.accept(rng.choice(allowed(bitmask, i, vocab)))
    return statistics.median(one_by_one), statistics.median(batched)


def engine_step(
    model: GPT2LMHeadModel, grammars: Grammars, grammar: str | None, batch: int, steps: int, clock: Clock
) -> float:
    """Median seconds of a sampled decode step while all `batch` rows run, each under `grammar` (or none)."""
    engine = Engine(model, max_batch_size=batch)
    for i in range(batch):
        params = SamplingParams(max_tokens=steps, temperature=1.0, seed=i)
        engine.add_request(str(i), [1 + i, 2, 3, 4], params, None if grammar is None else grammars.row(grammar))
    engine.prefill()
    times = []
    while engine.num_active == batch:
        t0 = clock()
        engine.decode()
        times.append(clock() - t0)
    return statistics.median(times)


def engine_cost(tok: PreTrainedTokenizerFast, batches: list[int], steps: int, repeats: int, clock: Clock) -> None:
    model, label = load_model(GPT_DIR)
    grammars = Grammars(tok, len(tok))
    grammar = build_grammar("json", STRINGS)
    print(f"\nDecode step, every row under a JSON schema vs none ({label}); medians of {repeats} interleaved repeats")
    print("| batch | none ms | constrained ms | added ms a step | ratio |\n|---:|---:|---:|---:|---:|")
    for batch in batches:
        plain: list[float] = []
        masked: list[float] = []
        for rep in range(repeats):
            for which in (None, grammar) if rep % 2 == 0 else (grammar, None):
                (plain if which is None else masked).append(engine_step(model, grammars, which, batch, steps, clock))
        p, m = statistics.median(plain), statistics.median(masked)
        ratios = statistics.median(b / a for a, b in zip(plain, masked, strict=True))
        print(f"| {batch} | {p * 1e3:.2f} | {m * 1e3:.2f} | {(m - p) * 1e3:.2f} | {ratios:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="thread: this thread's CPU time, torch on one thread: steadier on a machine others load",
    )
    args = parser.parse_args()
    torch.set_num_threads(1 if args.clock == "thread" else 2)
    clock: Clock = time.thread_time if args.clock == "thread" else time.perf_counter
    tok = load_tokenizer(GPT_DIR)
    vocab = len(tok)
    schema = json.dumps(SCHEMA)
    print(f"mask per decode step, vocabulary {vocab}, {args.steps} steps; medians")
    for name, (module, make) in LIBRARIES.items():
        if importlib.util.find_spec(module) is None:
            print(f"{name:14} not installed")
            continue
        t0 = time.perf_counter()
        lib = make(tok, vocab)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = lib.compile(schema)
        lib.row(compiled)  # llguidance compiles when its first matcher is made
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lib.row(compiled)
        row_s = time.perf_counter() - t0
        line = (
            f"{name:14} tokenizer {setup * 1e3:6.1f} ms, compile {compile_s * 1e3:6.2f} ms, row {row_s * 1e3:6.3f} ms"
        )
        for b in (int(x) for x in args.batches.split(",")):
            seq, par = measure(lib, compiled, b, args.steps, vocab, b, clock)
            line += f"  | batch {b}: {seq * 1e3:6.3f} ms one by one, {par * 1e3:6.3f} ms batched"
        print(line, flush=True)
    engine_cost(tok, [int(x) for x in args.batches.split(",")], min(args.steps, 120), args.repeats, clock)


if __name__ == "__main__":
    main()
