"""Wire schemas of structured output: vLLM's `structured_outputs` (completions and chat), OpenAI's `response_format`
and tools (chat). Each names the grammar it asks for (`GrammarAsk`); service/api/gpt/structured.py builds it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.grammar import GrammarKind
from service.schemas.sampling import Lenient

MAX_CHOICES = 64
MAX_GRAMMAR_CHARS = 16_384
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for a function's name


class GrammarAsk(NamedTuple):
    """A grammar as a request asks for it: its kind, its text or schema, and the parameter a 400 names."""

    kind: GrammarKind
    spec: Any
    param: str


class StructuredOutputs(BaseModel):
    """vLLM's extension: exactly one of `json` (a schema), `regex`, `choice` or `grammar` (EBNF, GBNF or Lark)."""

    # What vLLM also takes here (structural_tag, whitespace options) is refused by name, not ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_schema: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = Field(default=None, min_length=1, max_length=MAX_GRAMMAR_CHARS)
    choice: list[str] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)
    grammar: str | None = Field(default=None, min_length=1, max_length=MAX_GRAMMAR_CHARS)

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        if len(self.model_fields_set) != 1:
            raise ValueError("give exactly one of json, regex, choice or grammar")
        return self

    def ask(self) -> GrammarAsk:
        field = next(iter(self.model_fields_set))
        kind = cast(GrammarKind, "json" if field == "json_schema" else field)
        return GrammarAsk(kind, getattr(self, field), f"structured_outputs.{kind}")


class StructuredRequest(BaseModel):
    structured_outputs: StructuredOutputs | None = Field(
        default=None, description="Extension (vLLM): constrain the output to a JSON schema, regex, choice or grammar."
    )

    def grammar_ask(self) -> GrammarAsk | None:
        """The grammar the request asks its output to follow, if any."""
        return None if self.structured_outputs is None else self.structured_outputs.ask()


class JsonSchemaFormat(Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = Field(
        default=None,
        description="Constrained either way; strict, as OpenAI's rule, an object takes no property it does not name.",
    )


class ResponseFormat(Lenient):
    type: str = "text"
    json_schema: JsonSchemaFormat | None = None

    def ask(self) -> GrammarAsk | None:
        """The grammar this format asks for (None for text); a `type` not known is left to `unsupported`."""
        fmt = self.json_schema
        schema, strict = (fmt.json_schema, fmt.strict) if fmt is not None else (None, None)
        return format_ask(self.type, schema, strict, "response_format", "response_format.json_schema.schema")

    def refused(self) -> tuple[str, str] | None:
        return format_refused(self.type, self.json_schema, "response_format", "response_format.json_schema")


FORMAT_TYPES = ("text", "json_object", "json_schema")


def format_ask(
    kind: str, schema: dict[str, Any] | None, strict: bool | None, param: str, schema_param: str
) -> GrammarAsk | None:
    """The grammar an OpenAI output format (chat's `response_format`, the Responses API's `text.format`) asks for:
    none for text, any object for json_object, its schema for json_schema (strict: every object closed)."""
    if kind == "json_object":
        return GrammarAsk("json", {"type": "object"}, param)
    if kind == "json_schema" and schema is not None:
        return GrammarAsk("json", closed(schema) if strict else schema, schema_param)
    return None


def format_refused(kind: str, schema: object, param: str, schema_param: str) -> tuple[str, str] | None:
    """(parameter, why) when an output format cannot be served: a type not known, or json_schema without a schema."""
    if kind not in FORMAT_TYPES:
        return f"{param}.type", f"{param} {kind!r} is not supported by this model"
    if kind == "json_schema" and schema is None:
        return schema_param, f"a json_schema {param} needs its schema"
    return None


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object that does not say (strict mode's rule)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class FunctionDefinition(Lenient):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(Lenient):
    name: str
    arguments: str = Field(description="The arguments as JSON text, as the model wrote them.")


class ToolCall(Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


MAX_MASK_STEPS = 256
MAX_CANDIDATES = 20
Byte = Annotated[int, Field(ge=0, le=255)]


class MaskStep(BaseModel):
    """One decoding step as chat logprobs report it: the chosen token's bytes and its alternatives' bytes."""

    chosen: list[Byte] = Field(min_length=1, max_length=64)
    candidates: list[list[Byte]] = Field(default_factory=list, max_length=MAX_CANDIDATES)


class MaskRequest(BaseModel):
    """Extension (the playground's Constrained view): which tokens the grammar allowed at each step of a reply."""

    structured_outputs: StructuredOutputs
    steps: list[MaskStep] = Field(min_length=1, max_length=MAX_MASK_STEPS)


class MaskedStep(BaseModel):
    allowed: list[bool] = Field(description="For each candidate: whether the grammar allowed it at this step.")


class MaskResponse(BaseModel):
    object: Literal["structured.mask"] = "structured.mask"
    steps: list[MaskedStep]
