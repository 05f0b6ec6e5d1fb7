"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: the one builder for every endpoint.

Validation failures keep FastAPI's 422 and its `detail` list (tools written for plain FastAPI read it) and add
OpenAI's `error` object naming the parameter, so the OpenAI SDK raises a readable error.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from service.transport.messages import Failure

logger = logging.getLogger(__name__)


def error_type(status: int) -> str:
    """OpenAI's error type for an HTTP status: the client's fault below 500, the server's from 500."""
    return "invalid_request_error" if status < 500 else "server_error"


def openai_error(
    message: str, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error"
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def failure_body(failure: Failure) -> dict[str, Any]:
    """A worker's or the transport's `Failure` as OpenAI's error body."""
    return openai_error(failure.message, failure.param, failure.code, error_type(failure.status))


def failure_response(failure: Failure) -> JSONResponse:
    # The client's own timeout ran out: the openai SDK would retry a 408 twice, tripling the work for nothing.
    headers = {"x-should-retry": "false"} if failure.status == 408 else None
    return JSONResponse(status_code=failure.status, content=failure_body(failure), headers=headers)


def failure_exception(failure: Failure) -> HTTPException:
    return HTTPException(failure.status, failure_body(failure))


def bad_request(message: str, param: str, code: str = "invalid_value") -> HTTPException:
    """A 400 in OpenAI's shape naming `param`."""
    return HTTPException(400, openai_error(message, param, code))


def out_of_vocabulary(param: str, vocab_size: int) -> HTTPException:
    """A 400 for a token id outside the vocabulary, naming where it is (`prompt.3`, `logit_bias.50300`)."""
    return bad_request(f"{param}: token id outside the vocabulary (size {vocab_size})", param)


def model_not_found(model: str) -> HTTPException:
    """A 404 for a model this server does not serve, as OpenAI answers it."""
    return HTTPException(404, openai_error(f"The model '{model}' does not exist.", "model", "model_not_found"))


def error_content(exc: BaseException) -> dict[str, Any]:
    """The error body for any exception: an HTTPException keeps its message, anything else is a plain 500."""
    if isinstance(exc, StarletteHTTPException):
        if isinstance(exc.detail, dict) and "error" in exc.detail:
            return exc.detail
        return openai_error(str(exc.detail), None, None, error_type(exc.status_code))
    logger.error("internal error: %r", exc)
    return openai_error("internal error", None, "internal_error", "server_error")


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities (which strict JSON cannot carry) by their names.

    FastAPI's own handler echoes such an input back and fails with a 500.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _param(loc: Any) -> str:
    # FastAPI locations start with "body"; drop it and join the rest: "pixels.1.2", "max_tokens".
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the parameter, in OpenAI's shape plus FastAPI's `detail`."""
    assert isinstance(exc, RequestValidationError)
    errors = _json_safe(jsonable_encoder(exc.errors()))
    param = _param(errors[0].get("loc", ())) if errors else "body"
    message = "; ".join(f"{_param(e.get('loc', ()))}: {e.get('msg', '')}" for e in errors) or "invalid request"
    body = openai_error(message, param, "invalid_value")
    body["detail"] = errors
    return JSONResponse(status_code=422, content=body)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found" and request.url.path.startswith("/v1/"):
        # No route: say which, in OpenAI's words, so that a client learns what this server does not serve.
        message = f"Invalid URL ({request.method} {request.url.path}): this server has no such endpoint"
        return JSONResponse(status_code=404, content=openai_error(message, None, "unknown_url"))
    return JSONResponse(status_code=exc.status_code, content=error_content(exc), headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
