"""Grammars that constrain decoding, on llguidance: a request's structured output (JSON schema, regex, choice, EBNF)
as one grammar text, and per sequence a matcher that masks the tokens the grammar forbids.

The API server builds and checks a grammar (`build_grammar`: a `GrammarError` is a 400); the GPT worker compiles it
off the decode thread, once per distinct grammar (`Grammars`), and hands the engine one `GrammarRow` per sequence.
Why llguidance, with the measured cost of its mask: docs/structured.md.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Literal

import llguidance
import llguidance.hf
import torch
from transformers import PreTrainedTokenizerFast

# vLLM's structured_outputs kinds, and what OpenAI's response_format and tool calls become.
GrammarKind = Literal["json", "regex", "choice", "grammar"]

# Compact JSON with a space after separators, as json.dumps writes it: flexible whitespace lets a small model pad
# its output with new lines until max_tokens.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
COMPILED_CACHE = 64  # distinct grammars a worker keeps compiled


class GrammarError(ValueError):
    """The grammar cannot be compiled; the message says why."""


def build_grammar(kind: GrammarKind, spec: Any) -> str:
    """The llguidance grammar for `spec` (a JSON schema as a dict or text, a regex, a list of choices, an EBNF
    grammar in GBNF or Lark syntax), checked; raises `GrammarError` saying what is wrong."""
    try:
        if kind == "json":
            schema = spec if isinstance(spec, str) else json.dumps(spec)
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)  # type: ignore[arg-type]
        elif kind == "choice":
            if not spec or not all(isinstance(c, str) and c for c in spec):
                raise GrammarError("choice needs a list of non-empty strings")
            grammar = llguidance.grammar_from("choice", json.dumps(list(spec)))
        else:
            grammar = llguidance.grammar_from("regex" if kind == "regex" else "grammar", spec)
    except GrammarError:
        raise
    except Exception as exc:  # llguidance raises ValueError or its own errors, with a message worth showing
        raise GrammarError(str(exc)) from exc
    why = llguidance.LLMatcher.validate_grammar(grammar, None)
    if why:
        raise GrammarError(why.strip())
    return grammar


class GrammarRow:
    """One sequence's place in its grammar: fills its row of the allowed-token bitmask, takes each chosen token.

    What the engine asks of a constrained row (model/sampling.py's `Constraint`)."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def fill_bitmask(self, words: torch.Tensor) -> None:
        """Write the allowed tokens into `words`, a contiguous int32 CPU row: bit t % 32 of word t // 32."""
        self._matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())

    def accept(self, token: int) -> None:
        self._matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        """Whether the grammar is complete and takes nothing more (end-of-text included), or the matcher failed."""
        return bool(self._matcher.is_stopped())

    def allows(self, tokens: list[int]) -> list[bool]:
        """Whether each of `tokens` is allowed next (for tools that show the mask)."""
        mask = self._matcher.compute_bitmask()
        return [bool(mask[t // 8] >> (t % 8) & 1) for t in tokens]


class Grammars:
    """Compiles grammars for one tokenizer, each distinct grammar once (the most recent `COMPILED_CACHE` kept)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, vocab_size: int) -> None:
        self._tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def row(self, grammar: str) -> GrammarRow:
        """A fresh matcher at the start of `grammar`; raises `GrammarError` if it does not compile."""
        with self._lock:
            compiled = self._compiled.get(grammar)
            if compiled is not None:
                self._compiled.move_to_end(grammar)
        if compiled is None:
            compiled = llguidance.LLMatcher(self._tok, grammar, log_level=0)
            if compiled.is_error():
                raise GrammarError(compiled.get_error())
            with self._lock:
                self._compiled[grammar] = compiled
                while len(self._compiled) > COMPILED_CACHE:
                    self._compiled.popitem(last=False)
        return GrammarRow(compiled.deep_copy())

    @property
    def compiled(self) -> int:
        return len(self._compiled)
