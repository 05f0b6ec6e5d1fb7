"""Wire schemas of OpenAI's chat completions, `POST /v1/chat/completions`: the request, the answer and its chunks.

Values are bounded here (422 naming the field). What OpenAI defines but this model cannot do (a tool call the model
would choose itself, audio and images) is accepted by the schema and refused by `unsupported()` with a 400 naming
it, never ignored. Structured output and forced tool calls are decoded under a grammar (service/schemas/structured.py).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from model.sampling import MAX_LOGPROBS
from service.schemas.completions import FinishReason, Usage
from service.schemas.sampling import Lenient, SamplingRequest
from service.schemas.structured import (
    GrammarAsk,
    ResponseFormat,
    StructuredRequest,
    Tool,
    ToolCall,
    ToolChoice,
)

MAX_MESSAGES = 64
MAX_CONTENT_CHARS = 32_768
MAX_NAME_CHARS = 64

# Request fields OpenAI defines that this model cannot honour: refused by name (a 400), never silently ignored.
NOT_SUPPORTED = ("functions", "function_call", "audio", "prediction", "web_search_options")
# Values of those that ask for nothing (agent frameworks send them on every call): no tool, so nothing to refuse.
ASKS_NOTHING: tuple[object, ...] = (None, [], "none")


def speaker_heading(name: str) -> str:
    """A message's `name` as one heading line of the play: any character but control ones, whitespace runs (new
    lines included) as one space, no full stop at the end (the heading adds its own); "" when nothing is left."""
    line = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    return line.rstrip(". ")


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = Field(
        default=None, description='A string, or a list of parts of {"type": "text", "text": ...}.'
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="The speaker's name: its heading line (new lines and control characters become spaces).",
    )
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant's calls, earlier in the chat.")
    tool_call_id: str | None = Field(default=None, description="A tool message: the call it answers.")

    def unsupported(self, where: str) -> tuple[str, str] | None:
        if self.tool_calls and self.role != "assistant":
            return f"{where}.tool_calls", "only an assistant message carries tool calls"
        if isinstance(self.content, list):
            for i, part in enumerate(self.content):
                kind = part.get("type")
                if kind != "text":
                    return (
                        f"{where}.content.{i}.type",
                        f"content parts of type {kind!r} are not supported by this model",
                    )
                if not isinstance(part.get("text"), str):
                    return f"{where}.content.{i}.text", "a text part needs a string `text`"
        return None

    @property
    def text(self) -> str:
        """The content as one string: text parts joined by new lines (as vLLM does)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(StructuredRequest, SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=4096, description="Deprecated by OpenAI for the next one.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=4096, description="New tokens per choice; default: what the context leaves."
    )
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None
    modalities: list[str] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=64)
    tool_choice: ToolChoice | None = Field(
        default=None, description='"required" or a named function: the reply is a call; "auto" is refused.'
    )
    parallel_tool_calls: bool | None = Field(default=None, description="Accepted: a reply makes one call.")
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None

    @field_validator("messages")
    @classmethod
    def _check_length(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if sum(len(m.text) for m in v) > MAX_CONTENT_CHARS:
            raise ValueError(f"the messages hold more than {MAX_CONTENT_CHARS} characters")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        """(parameter, why) for the first thing asked that this model cannot do, or None."""
        for name in NOT_SUPPORTED:
            if not any(getattr(self, name) == nothing for nothing in ASKS_NOTHING):
                return name, f"`{name}` is not supported by this model"
        refused = self._tools_refused() or self._format_refused()
        if refused is not None:
            return refused
        if self.modalities is not None and set(self.modalities) != {"text"}:
            return "modalities", "only the text modality is supported by this model"
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        for i, message in enumerate(self.messages):
            found = message.unsupported(f"messages.{i}")
            if found is not None:
                return found
        return None

    def _tools_refused(self) -> tuple[str, str] | None:
        choice = self.tool_choice
        if choice == "auto" or (self.tools and choice is None):  # OpenAI's default with tools is "auto"
            why = 'tool_choice "auto" is not supported: this model cannot decide to call; use "required" or name one'
            return "tool_choice", why
        if choice not in (None, "none") and not self.tools:
            return "tool_choice", "tool_choice needs tools"
        if not isinstance(choice, str) and choice is not None:
            if choice.function.name not in {t.function.name for t in self.tools or []}:
                return "tool_choice.function.name", f"no tool is called {choice.function.name!r}"
        return None

    def _format_refused(self) -> tuple[str, str] | None:
        refused = None if self.response_format is None else self.response_format.refused()
        if refused is not None:
            return refused
        asks = [name for name, ask in self._grammar_asks() if ask is not None]
        if len(asks) > 1:
            return asks[1], f"{asks[0]} and {asks[1]} each constrain the reply: give one"
        return None

    def _grammar_asks(self) -> list[tuple[str, object]]:
        forced = self.tool_choice not in (None, "none", "auto")
        return [
            ("response_format", self.response_format and self.response_format.ask()),
            ("structured_outputs", self.structured_outputs),
            ("tool_choice", self.tool_choice if forced else None),
        ]

    def grammar_ask(self) -> GrammarAsk | None:
        """The grammar of `response_format` or `structured_outputs`, if one asks (tools: `forced_tools`)."""
        asked = super().grammar_ask()
        return asked if asked is not None or self.response_format is None else self.response_format.ask()

    def forced_tools(self) -> list[Tool]:
        """The tools the reply must call one of (tool_choice "required" or named), else []."""
        if self.tool_choice in (None, "none", "auto") or not self.tools:
            return []
        if isinstance(self.tool_choice, str):
            return list(self.tools)
        return [t for t in self.tools if t.function.name == self.tool_choice.function.name]

    def asked_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def openai_max_tokens(self, room: int) -> int:
        return room  # OpenAI's chat generates until the model stops or the context is full

    def asked_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _no_empty_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("tool_calls") is None:
            out.pop("tool_calls", None)  # OpenAI leaves it out of a reply without calls
        return out


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


def chat_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Sparse(BaseModel):
    """A stream chunk's part: what is unset is left out (the spec types these fields non-null)."""

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class Delta(Sparse):
    """A stream chunk's delta; the last is `{}`."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class FunctionDelta(Sparse):
    name: str | None = None
    arguments: str


class ToolCallDelta(Sparse):
    """A streamed piece of a tool call: the first carries its id, type and name; the rest more of its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
