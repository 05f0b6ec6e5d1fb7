"""Trim OpenAI's published spec to the operations tinyserve serves, and every component they reference.

Run by hand when the spec is updated, never at test time:

    git -C <openai-openapi clone> show HEAD:openapi.yaml > /tmp/openapi.yaml
    python tests/openai_spec/trim.py /tmp/openapi.yaml <commit> > tests/openai_spec/openapi.json

The output is the spec's own text for those operations (nothing rewritten), with the source commit in
`info.x-trimmed-from`, so that the test reads 100 kB rather than 3 MB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OPERATIONS = (
    "createCompletion",
    "createChatCompletion",
    "listModels",
    "retrieveModel",
    "createEmbedding",
    "createResponse",
)
SOURCE = "https://github.com/openai/openai-openapi"


def refs(node: Any) -> set[str]:
    """Every `$ref` under `node`."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def trim(spec: dict[str, Any], commit: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        kept = {m: op for m, op in item.items() if isinstance(op, dict) and op.get("operationId") in OPERATIONS}
        if kept:
            paths[path] = {k: v for k, v in item.items() if k in kept or k == "parameters"}
    found = {op["operationId"] for item in paths.values() for op in item.values() if isinstance(op, dict)}
    missing = set(OPERATIONS) - found
    if missing:
        raise SystemExit(f"operations not in the spec: {sorted(missing)}")
    # Follow references from the kept operations until no new component turns up.
    components: dict[str, dict[str, Any]] = {}
    todo = refs(paths)
    while todo:
        ref = todo.pop()
        if not ref.startswith("#/components/"):
            raise SystemExit(f"a reference outside the components: {ref}")
        kind, name = ref.split("/")[2:4]
        if name in components.get(kind, {}):
            continue
        node = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = node
        todo |= refs(node)
    info = {**spec["info"], "x-trimmed-from": f"{SOURCE} {commit} openapi.yaml", "x-trimmed-to": list(OPERATIONS)}
    ordered = {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())}
    return {"openapi": spec["openapi"], "info": info, "servers": spec.get("servers", []), "paths": paths,
            "components": ordered}  # fmt: skip


def main() -> None:
    source, commit = sys.argv[1], sys.argv[2]
    spec = yaml.safe_load(Path(source).read_text())
    json.dump(trim(spec, commit), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
