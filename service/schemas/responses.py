"""Wire schemas of OpenAI's Responses API, `POST /v1/responses`: the request, the response object and what its
stream events carry (the shapes of the openai SDK's `types/responses`).

Values are bounded here (422 naming the field). What the Responses API defines but this server does not do (tools,
reasoning, stored responses, structured output, ...) is accepted by the schema and refused by `unsupported()` with
a 400 naming it, never ignored. Unknown fields are ignored, as in chat.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from model.sampling import MAX_LOGPROBS
from service.schemas.chat import MAX_CONTENT_CHARS, MAX_MESSAGES, ChatMessage, Sparse
from service.schemas.sampling import Lenient, SamplingRequest
from service.schemas.structured import GrammarAsk, format_ask, format_refused

MAX_METADATA = 16  # OpenAI's bounds on metadata: 16 pairs, keys of 64 characters, values of 512
MAX_OUTPUT_TOKENS = 4096

# Parameters refused whenever they are set: each asks for something this model or server does not do.
NOT_SUPPORTED = (
    "previous_response_id",  # responses are not stored: pass the earlier output items back as input
    "conversation",
    "prompt",
    "reasoning",
    "context_management",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "background_options",
    "moderation",
    "image",
    "access_programs",
)
TEXT_PARTS = ("input_text", "output_text")  # an earlier output passed back as input carries output_text
LOGPROBS = "message.output_text.logprobs"  # the one `include` this server serves


class InputItem(Lenient):
    """An input item: a message, in OpenAI's easy form (no `type`) or as an item (an earlier output passed back)."""

    type: str = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[dict[str, Any]] | None = Field(
        default=None, description='A string, or a list of {"type": "input_text" or "output_text", "text": ...}.'
    )

    @property
    def chars(self) -> int:
        """Characters of text in the content, as the input's length bound counts them."""
        if not isinstance(self.content, list):
            return len(self.content or "")
        return sum(len(str(part.get("text", ""))) for part in self.content)

    def message(self) -> ChatMessage:
        """The item as a chat message: `developer` (OpenAI's successor to `system`) is `system`, text parts chat's."""
        role = "system" if self.role in ("system", "developer") else self.role or "user"
        content = self.content
        if isinstance(content, list):
            content = [{**part, "type": "text"} if part.get("type") in TEXT_PARTS else part for part in content]
        return ChatMessage.model_validate({"role": role, "content": content})

    def unsupported(self, where: str) -> tuple[str, str] | None:
        if self.type != "message":
            return f"{where}.type", f"input items of type {self.type!r} are not supported by this server"
        if self.role is None:
            return f"{where}.role", "a message needs a role: user, assistant, system or developer"
        return self.message().unsupported(where)


class TextFormat(Sparse, Lenient):
    """`text`, `json_object`, or `json_schema` with its name, schema and strict flag (flat, unlike chat's)."""

    model_config = ConfigDict(serialize_by_alias=True)

    type: str = "text"
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    def ask(self) -> GrammarAsk | None:
        return format_ask(self.type, self.json_schema, self.strict, "text.format", "text.format.schema")

    def refused(self) -> tuple[str, str] | None:
        return format_refused(self.type, self.json_schema, "text.format", "text.format.schema")


class TextConfig(Lenient):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(SamplingRequest):
    MAX_TOKENS_PARAM: ClassVar[str] = "max_output_tokens"

    input: list[InputItem] = Field(
        min_length=1, max_length=MAX_MESSAGES, description="A string (one user message), or a list of message items."
    )
    instructions: str | None = Field(
        default=None, max_length=MAX_CONTENT_CHARS, description="A system message put before the input."
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, le=MAX_OUTPUT_TOKENS, description="New tokens at most; default: what the context leaves."
    )
    n: int = Field(default=1, ge=1, le=1, description="A response has one output.")
    text: TextConfig | None = None
    metadata: dict[str, str] | None = Field(default=None, description="Up to 16 pairs, echoed in the response.")
    store: bool | None = Field(default=None, description="Responses are not stored: only false (or omitted).")
    background: bool | None = None
    include: list[str] | None = Field(default=None, description=f"Only {LOGPROBS!r}: each token's logprob.")
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="Alternatives per token.")
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # accepted: with no tools it has nothing to bound
    max_tool_calls: int | None = Field(default=None, ge=0)  # accepted: no tool is ever called
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=64, description="Accepted and ignored.")
    previous_response_id: Any = None
    conversation: Any = None
    prompt: Any = None
    reasoning: Any = None
    context_management: Any = None
    prompt_cache_key: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    background_options: Any = None
    moderation: Any = None
    image: Any = None
    access_programs: Any = None

    @field_validator("input", mode="before")
    @classmethod
    def _a_string_is_a_user_message(cls, v: Any) -> Any:
        # One list type behind the field, so that a 422 names `input.0.role`, not a member of a union.
        return [{"role": "user", "content": v}] if isinstance(v, str) else v

    @field_validator("input")
    @classmethod
    def _check_length(cls, v: list[InputItem]) -> list[InputItem]:
        if sum(item.chars for item in v) > MAX_CONTENT_CHARS:
            raise ValueError(f"the input holds more than {MAX_CONTENT_CHARS} characters")
        return v

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (
            len(v) > MAX_METADATA or any(len(key) > 64 or len(value) > 512 for key, value in v.items())
        ):
            raise ValueError("at most 16 pairs, keys of at most 64 characters and values of at most 512")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        """(parameter, why) for the first thing asked that this server cannot do, or None."""
        for name in NOT_SUPPORTED:
            if getattr(self, name) is not None:
                return name, f"`{name}` is not supported by this server"
        if self.store:
            return "store", "responses are not stored by this server: send store false, or omit it"
        if self.background:
            return "background", "background responses are not supported by this server"
        if any(name != LOGPROBS for name in self.include or []):
            return "include", f"only {LOGPROBS!r} can be included by this server"
        if self.top_logprobs is not None and LOGPROBS not in (self.include or []):
            return "top_logprobs", f"top_logprobs needs include [{LOGPROBS!r}]"
        if self.tools:
            return "tools", "tools are not supported by this model"
        if self.tool_choice is not None and self.tool_choice != "none":
            return "tool_choice", "tool_choice other than 'none' is not supported by this model"
        if self.truncation == "auto":
            return "truncation", "truncation 'auto' is not supported: an input past the context is a 400"
        if self.service_tier not in (None, "auto", "default"):
            return "service_tier", f"service_tier {self.service_tier!r} is not supported by this server"
        text = self.text or TextConfig()
        refused = None if text.format is None else text.format.refused()
        if refused is not None:
            return refused
        if text.verbosity not in (None, "medium"):
            return "text.verbosity", "only the default verbosity, 'medium', is supported by this model"
        for i, item in enumerate(self.input):
            found = item.unsupported(f"input.{i}")
            if found is not None:
                return found
        return None

    def grammar_ask(self) -> GrammarAsk | None:
        """The grammar `text.format` asks the output to follow, if any."""
        return None if self.text is None or self.text.format is None else self.text.format.ask()

    def asked_max_tokens(self) -> int | None:
        return self.max_output_tokens

    def openai_max_tokens(self, room: int) -> int:
        return room  # generates until the speech ends or the context is full, as chat

    def asked_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if LOGPROBS in (self.include or []) else None


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str = Field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"
    content: list[OutputText] = Field(default_factory=list)


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # the openai SDK's current types require it


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseTextConfig(BaseModel):
    format: TextFormat = Field(default_factory=TextFormat)


class Response(BaseModel):
    """The response object: in a plain answer, and in the stream's lifecycle events."""

    id: str = Field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    parallel_tool_calls: bool = False
    previous_response_id: None = None
    reasoning: None = None
    service_tier: str = "default"
    store: bool = False
    temperature: float
    text: ResponseTextConfig = Field(default_factory=ResponseTextConfig)
    tool_choice: Literal["none"] = "none"
    tools: list[Any] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    # No `user`: the spec types it as a string, never null, and it is deprecated (the request's is ignored).

    @model_serializer(mode="wrap")
    def _usage_once_known(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("usage") is None:  # the spec's usage is an object, never null: left out of the in-progress events
            data.pop("usage", None)
        return data
