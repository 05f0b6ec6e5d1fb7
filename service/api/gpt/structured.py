"""Structured output at the API server: a request's grammar built and checked before anything is queued (a 400
naming the field when it cannot compile), and a forced tool call as a grammar in, a tool call out.

The worker compiles the same grammar text again, for its tokenizer, off the decode thread (model/grammar.py).
"""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from dataclasses import dataclass
from typing import Any

from model.gpt import token_bytes
from model.grammar import GrammarError, Grammars, build_grammar
from service.api.errors import bad_request
from service.api.gpt.served import ServedGPT
from service.schemas.structured import (
    FunctionCall,
    GrammarAsk,
    MaskedStep,
    MaskRequest,
    MaskResponse,
    Tool,
    ToolCall,
    closed,
)

ANY_OBJECT: dict[str, Any] = {"type": "object"}
# The start of a call among several, as the grammar writes it (model/grammar.py's separators).
_CALL = re.compile(r'\{"name": "(?P<name>[^"]*)"(?:, "arguments": (?P<arguments>.*))?', re.S)


def grammar_of(ask: GrammarAsk | None) -> str | None:
    """The grammar `ask` names, checked; a 400 naming its parameter when it cannot compile."""
    if ask is None:
        return None
    try:
        return build_grammar(ask.kind, ask.spec)
    except GrammarError as exc:
        raise bad_request(f"{ask.param} cannot be compiled: {exc}", ask.param, "invalid_grammar") from exc


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ForcedCall:
    """A reply that must call one of `tools`: one tool's arguments under its parameters' schema; of several, an
    object naming the tool and holding its arguments (`{"name": ..., "arguments": {...}}`), as vLLM asks for it."""

    tools: list[Tool]

    @property
    def named(self) -> str | None:
        """The function's name when there is one tool: the generated text is then its arguments alone."""
        return self.tools[0].function.name if len(self.tools) == 1 else None

    def ask(self) -> GrammarAsk:
        if self.named is not None:
            return GrammarAsk("json", _parameters(self.tools[0]), "tools.0.function.parameters")
        choices = [
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": _parameters(t)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        return GrammarAsk("json", {"anyOf": choices}, "tools")

    def split(self, text: str, complete: bool | None) -> tuple[str, str] | None:
        """The function's name and arguments in the generated `text`, None while the name is not whole yet.

        `complete`: True when the grammar is, False when the text was cut short, None while it runs; of several
        tools, the arguments end before the call's own closing brace, so that one is held back while it runs."""
        if self.named is not None:
            return self.named, text
        found = _CALL.match(text)
        if found is None:
            return None
        arguments = found["arguments"] or ""
        return found["name"], arguments if complete is False else arguments[:-1]

    def call(self, text: str, call_id: str, complete: bool) -> ToolCall:
        """The tool call the generated `text` makes (arguments as far as they got, if it was cut short)."""
        name, arguments = self.split(text, complete) or ("", "")
        return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))


def _parameters(tool: Tool) -> dict[str, Any]:
    """A function's arguments schema (any object when it has none); strict, every object closed, as OpenAI's."""
    schema = tool.function.parameters or ANY_OBJECT
    return closed(schema) if tool.function.strict else schema


class MaskRoutes:
    """`POST /v1/structured/mask`: replays a reply's tokens through its grammar and says which of each step's
    alternatives the grammar allowed (the playground's Constrained view). Runs here, in the API server: it needs
    the tokenizer and the grammar, not the model."""

    def __init__(self, gpt: ServedGPT) -> None:
        self.gpt = gpt

    @functools.cached_property
    def _grammars(self) -> Grammars:
        return Grammars(self.gpt.tok, self.gpt.vocab_size)  # the token table takes half a second: on first use

    @functools.cached_property
    def _ids(self) -> dict[bytes, int]:
        """Each token's id by its bytes (byte-level BPE: no two tokens share them), as chat logprobs report them."""
        return {token_bytes(self.gpt.tok, i): i for i in range(self.gpt.vocab_size)}

    async def mask(self, body: MaskRequest) -> MaskResponse:
        grammar = grammar_of(body.structured_outputs.ask())
        return await asyncio.to_thread(self._replay, grammar, body)

    def _replay(self, grammar: str | None, body: MaskRequest) -> MaskResponse:
        assert grammar is not None  # structured_outputs always asks for one
        row = self._grammars.row(grammar)
        steps = []
        for i, step in enumerate(body.steps):
            ids = [self._id(step.chosen, f"steps.{i}.chosen")]
            ids += [self._id(c, f"steps.{i}.candidates.{j}") for j, c in enumerate(step.candidates)]
            allowed = row.allows(ids)
            if not allowed[0]:
                raise bad_request("the grammar forbids this token: the steps do not follow it", f"steps.{i}.chosen")
            steps.append(MaskedStep(allowed=allowed[1:]))
            row.accept(ids[0])
        return MaskResponse(steps=steps)

    def _id(self, data: list[int], param: str) -> int:
        found = self._ids.get(bytes(data))
        if found is None:
            raise bad_request("no token has these bytes", param)
        return found
