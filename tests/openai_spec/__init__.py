"""OpenAI's published spec, trimmed to the operations served here (openapi.json; trim.py, README.md): loaded, its
request properties listed, and its schemas turned into JSON-schema validators for what schemathesis cannot read."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_PATH = Path(__file__).with_name("openapi.json")


@cache
def spec() -> dict[str, Any]:
    return dict(json.loads(SPEC_PATH.read_text()))


def schema(name: str) -> dict[str, Any]:
    return dict(spec()["components"]["schemas"][name])


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = {**schema(node["$ref"].rsplit("/", 1)[1]), **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def properties(name: str) -> dict[str, dict[str, Any]]:
    """The request properties of schema `name`, its allOf parts merged."""
    node = _resolve({"$ref": f"#/components/schemas/{name}"})
    found: dict[str, dict[str, Any]] = {}
    for part in node.get("allOf", []):
        found.update(properties(part["$ref"].rsplit("/", 1)[1]) if "$ref" in part else part.get("properties", {}))
    found.update(node.get("properties", {}))
    return found


def nullable(prop: dict[str, Any]) -> bool:
    """Whether the spec lets a client send null: `nullable: true` (OpenAPI 3.0's way) or a null branch (3.1's)."""
    node = _resolve(prop)
    if node.get("nullable") is True or node.get("type") == "null":
        return True
    return any(nullable(branch) for key in ("anyOf", "oneOf") for branch in node.get(key, []))


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's null branch (the spec declares 3.1 but still uses it)."""
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


# Where the spec is narrower than OpenAI's own wire, which clients are written against: JSON pointers under a schema
# and what replaces the sub-schema there. Applied to a copy (the vendored file stays OpenAI's text).
ERRATA: dict[str, dict[str, Any]] = {
    "CreateCompletionResponse": {
        # An echoed prompt's first token has no logprob: OpenAI's legacy API and vLLM send null there.
        "/properties/choices/items/properties/logprobs/anyOf/0/properties/token_logprobs/items": {
            "type": ["number", "null"]
        },
        "/properties/choices/items/properties/logprobs/anyOf/0/properties/top_logprobs/items": {
            "anyOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "null"}]
        },
    },
    "Embedding": {
        # encoding_format "base64" (what the openai SDK asks for by default) answers each vector as a string.
        "/properties/embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]},
    },
}
# Completions chunks: the spec has no stream schema and the answer's says finish_reason is never null, but every
# chunk before a choice's last carries null there, on OpenAI's wire as here.
COMPLETION_CHUNK_ERRATA = {
    "/properties/choices/items/properties/finish_reason": {
        "anyOf": [{"type": "string", "enum": ["stop", "length", "content_filter"]}, {"type": "null"}]
    },
}


def with_errata(document: dict[str, Any], errata: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of `document` with `errata` ({schema name: {pointer: replacement}}) applied."""
    document = copy.deepcopy(document)
    for name, replacements in errata.items():
        target = document["components"]["schemas"][name]
        for pointer, replacement in replacements.items():
            *parents, last = pointer.strip("/").split("/")
            node = target
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            node[last] = replacement
    return document


def validator(name: str, errata: dict[str, Any] | None = None) -> Draft202012Validator:
    """A validator of schema `name`, references resolved inside the spec, with `ERRATA` and `errata` (pointers
    under `name`) applied."""
    document = _to_json_schema(with_errata(spec(), {**ERRATA}))
    document = with_errata(document, {name: errata or {}})
    return Draft202012Validator({**document, "$ref": f"#/components/schemas/{name}"})
