"""schemathesis hooks for tests/server/test_openai_spec.py (loaded by `st` through SCHEMATHESIS_HOOKS): every
generated request names this server's model and asks for few tokens, and a chat request loses the parameters it
would be refused for by name, so that most bodies the spec allows reach the model and their 200 answers get checked,
in seconds."""

from __future__ import annotations

from typing import Any

import schemathesis
from pydantic import ValidationError

from service.schemas.chat import ChatCompletionRequest
from service.schemas.responses import ResponsesRequest

MODEL = "tinyserve-gpt"
# Bounds on what a generated request may cost; values outside the spec's ranges are left for a 4xx.
CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "max_output_tokens": 16, "n": 2, "best_of": 3}
# The endpoints that refuse parameters by name, and their request models.
REFUSING: dict[str, type[ChatCompletionRequest] | type[ResponsesRequest]] = {
    "/chat/completions": ChatCompletionRequest,
    "/responses": ResponsesRequest,
}


def drop_refused(body: dict[str, Any], request: type[ChatCompletionRequest] | type[ResponsesRequest]) -> None:
    """Leave out each top-level parameter the endpoint refuses by name (a 400, tested in tests/protocol/)."""
    for _ in range(len(body)):
        try:
            refused = request.model_validate(body).unsupported()
        except ValidationError:
            return  # a 422 case: it stays as generated
        if refused is None or refused[0] not in body:
            return
        del body[refused[0]]


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if isinstance(case.body, dict):
        case.body["model"] = MODEL
        for key, cap in CAPS.items():
            value = case.body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                case.body[key] = cap
        if case.body.get("max_tokens") == 0 and not case.body.get("echo"):
            case.body["max_tokens"] = 1  # 0 is for scoring a prompt (echo); otherwise a documented 400
        if case.operation.path in REFUSING:
            drop_refused(case.body, REFUSING[case.operation.path])
        if case.operation.path == "/responses" and case.body.get("max_output_tokens") is None:
            case.body["max_output_tokens"] = CAPS["max_output_tokens"]
        if case.operation.path == "/chat/completions":
            if case.body.get("max_tokens") is None and case.body.get("max_completion_tokens") is None:
                case.body["max_completion_tokens"] = CAPS["max_completion_tokens"]  # not the context's room
    if case.path_parameters and "model" in case.path_parameters:
        case.path_parameters["model"] = MODEL
    return case
