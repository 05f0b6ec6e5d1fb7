"""Structured output at the API server: a request's grammar built and checked before anything is queued (a 400
naming the field when it cannot compile), and a forced tool call as a grammar in, a tool call out.

The worker compiles the same grammar text again, for its tokenizer, off the decode thread (model/grammar.py).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from model.grammar import GrammarError, build_grammar
from service.api.errors import bad_request
from service.schemas.structured import FunctionCall, GrammarAsk, Tool, ToolCall

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
            return GrammarAsk("json", self.tools[0].function.parameters or ANY_OBJECT, "tools.0.function.parameters")
        choices = [
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters or ANY_OBJECT},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        return GrammarAsk("json", {"anyOf": choices}, "tools")

    def call(self, text: str, call_id: str) -> ToolCall:
        """The tool call the generated `text` makes (arguments as far as they got, if it was cut short)."""
        if self.named is not None:
            return ToolCall(id=call_id, function=FunctionCall(name=self.named, arguments=text))
        try:
            made = json.loads(text)
            name, arguments = made["name"], json.dumps(made["arguments"])
        except ValueError:  # cut short by max_tokens: the name and arguments as far as they got
            found = _CALL.match(text)
            name = found["name"] if found else ""
            arguments = (found["arguments"] or "") if found else ""
        return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
