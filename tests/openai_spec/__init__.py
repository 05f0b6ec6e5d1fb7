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


def validator(name: str, errata: dict[str, Any] | None = None) -> Draft202012Validator:
    """A validator of schema `name`, references resolved inside the spec; `errata` replaces sub-schemas by JSON
    pointer (`/properties/choices/items/...`, under `name`) where the spec is narrower than OpenAI's own wire."""
    document = _to_json_schema(copy.deepcopy(spec()))
    target = document["components"]["schemas"][name]
    for pointer, replacement in (errata or {}).items():
        *parents, last = pointer.strip("/").split("/")
        node = target
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = replacement
    root = {**document, "$ref": f"#/components/schemas/{name}"}
    return Draft202012Validator(root)
