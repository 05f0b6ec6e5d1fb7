"""Wire schemas of the GPT endpoints: OpenAI completions, models, and tokenize/detokenize (embeddings: embeddings.py).

Limits live here (`Field(ge=, le=)`), so a bad value is a 4xx naming the parameter before anything reaches a batch.
Unknown parameters are ignored, as OpenAI-compatible servers do. The sampling fields every generation request shares
are in service/schemas/sampling.py.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from model.sampling import MAX_LOGPROBS
from service.schemas.inputs import TextOrIds, check_inputs, split_inputs
from service.schemas.sampling import Lenient, SamplingRequest
from service.schemas.structured import StructuredRequest

# Hard caps that hold whatever the model: the model's context bounds prompt + max_tokens at admission.
MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 32_768
MAX_PROMPT_TOKENS = 65_536  # longer than any context: the server answers with the context it has (a 400)
MAX_BEST_OF = 20  # OpenAI's bound
OPENAI_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for the legacy completions API


class CompletionRequest(StructuredRequest, SamplingRequest):
    UNSUPPORTED = ("suffix",)

    prompt: TextOrIds = Field(
        description=f"A prompt as text or token ids, or a list of either (at most {MAX_PROMPTS}): a choice set each."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="New tokens per choice (bounded by the context); default 16. 0 only with echo: score the prompt.",
    )
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = Field(default=False, description="Return the prompt before the completion (and its logprobs).")
    best_of: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BEST_OF,
        description="Generate this many choices per prompt and return the n of highest mean token logprob.",
    )
    # OpenAI's, not implemented: present so that a request setting it is refused by name (400).
    suffix: str | None = Field(default=None, description="Not supported (400): the model cannot fill in the middle.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _null_prompt(cls, v: object) -> object:
        return "" if v is None else v  # OpenAI's default, <|endoftext|>: an empty prompt starts from it here too

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: TextOrIds) -> TextOrIds:
        check_inputs(v, "prompt", MAX_PROMPTS, MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS)
        return v

    @property
    def prompts(self) -> list[str | list[int]]:
        return split_inputs(self.prompt)

    @property
    def candidates(self) -> int:
        """Choices generated per prompt: best_of of them compete for the n returned."""
        return self.best_of or self.n

    @property
    def scores_prompt(self) -> bool:
        """The prompt's own tokens get logprobs (echo with logprobs), or are all the request asks for (max_tokens 0)."""
        return self.echo and (self.logprobs is not None or self.max_tokens == 0)

    def conflict(self) -> tuple[str, str] | None:
        """The parameter whose value the others rule out, and why (a 400), or None."""
        if self.max_tokens == 0 and not self.echo:
            return "max_tokens", "max_tokens may be 0 only with echo (to score the prompt)"
        if self.best_of is not None and self.best_of < self.n:
            return "best_of", f"best_of ({self.best_of}) must be at least n ({self.n})"
        if self.best_of is not None and self.best_of > self.n and self.stream:
            return "best_of", "best_of greater than n cannot be streamed"
        return None

    def asked_max_tokens(self) -> int | None:
        return self.max_tokens

    def openai_max_tokens(self, room: int) -> int:
        return OPENAI_COMPLETION_MAX_TOKENS

    def asked_logprobs(self) -> int | None:
        return self.logprobs


class Logprobs(BaseModel):
    """OpenAI's legacy completions logprobs: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


FinishReason = Literal["stop", "length", "cancelled", "error", "tool_calls"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: FinishReason | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


class Completion(BaseModel):
    """Both the full answer and each streamed chunk (OpenAI uses the same object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    @model_serializer(mode="wrap")
    def _usage_only_when_counted(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The spec types `usage` non-null: a chunk before the usage chunk leaves it out.
        data: dict[str, Any] = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data


class StreamChunk:
    """Writes one streamed chunk (a `Completion` with one choice) as an SSE event, for one request.

    The frame around the choice is `Completion`'s own JSON, made once per request; only the choice is written per
    token: pydantic's `model_dump_json` took 8.6 us a chunk, this 0.4 (measured).
    tests/server/test_completions_streaming.py checks that both give the same bytes.
    """

    def __init__(self, cid: str, model: str, created: int | None = None) -> None:
        self.created = int(time.time()) if created is None else created
        frame = Completion.model_construct(
            id=cid,
            object="text_completion",
            created=self.created,
            model=model,
            choices=[],
            usage=None,
        ).model_dump_json()
        self._head, self._tail = frame.split('"choices":[]', 1)

    def __call__(self, index: int, text: str, finish: FinishReason | None, logprobs: Logprobs | None = None) -> str:
        lp = "null" if logprobs is None else logprobs.model_dump_json()
        fin = "null" if finish is None else f'"{finish}"'
        text_json = json.dumps(text, ensure_ascii=False)
        choice = f'{{"index":{index},"text":{text_json},"logprobs":{lp},"finish_reason":{fin}}}'
        return f'data: {self._head}"choices":[{choice}]{self._tail}\n\n'


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tinyserve"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(Lenient):
    model: str | None = None
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] = Field(description="Each token's text, leading spaces included.")


class DetokenizeRequest(Lenient):
    model: str | None = None
    tokens: list[int] = Field(max_length=65_536)

    @field_validator("tokens")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(t < 0 for t in v):
            raise ValueError("token ids must be >= 0")
        return v


class DetokenizeResponse(BaseModel):
    prompt: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
