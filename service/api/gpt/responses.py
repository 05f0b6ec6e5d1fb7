"""OpenAI's Responses API, `POST /v1/responses`, on the GPT path of chat: the input items become chat messages
(`instructions` a system message first, `developer` a system message), rendered by chat's template, and the reply is
the assistant's speech (`SpeechStream`). Sampling, batching, guards, the deadline and cancel on disconnect are the
completions' own (service/api/gpt/choices.py). Responses are not stored (docs/api.md says why).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic_core import to_jsonable_python
from starlette.requests import Request

from service.api.errors import bad_request
from service.api.gpt.chat import Chat
from service.api.gpt.choices import Choice, ChoiceRun, Step, TokenLogprob, stream_error
from service.api.gpt.served import ServedGPT
from service.api.gpt.structured import grammar_of
from service.schemas.chat import ChatMessage
from service.schemas.responses import (
    IncompleteDetails,
    OutputMessage,
    OutputText,
    Response,
    ResponseError,
    ResponsesRequest,
    ResponseTextConfig,
    ResponseUsage,
    TextFormat,
)


def messages(body: ResponsesRequest) -> list[ChatMessage]:
    """The request as chat messages: the instructions first, then the input items."""
    instructions = [ChatMessage(role="system", content=body.instructions)] if body.instructions is not None else []
    return [*instructions, *(item.message() for item in body.input)]


class EventWriter:
    """The server-sent events of one streamed response, each named by its type and numbered in order."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        body = {"type": kind, "sequence_number": self.sequence, **to_jsonable_python(fields)}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n"


class Responses:
    def __init__(self, gpt: ServedGPT, chat: Chat) -> None:
        self.gpt = gpt
        self.chat = chat

    def _choice(self, body: ResponsesRequest) -> Choice:
        refused = body.unsupported()
        if refused is not None:
            param, why = refused
            raise bad_request(why, param, "unsupported_parameter")
        grammar = grammar_of(body.grammar_ask())
        prompt_ids = self.gpt.prompt_ids(self.chat.render(messages(body)), param="input")
        return self.chat.reply(body, prompt_ids, 0, body.asked_logprobs() is not None, grammar)

    async def create(self, body: ResponsesRequest, request: Request) -> Any:
        self.gpt.check_model(body.model)
        choice = self._choice(body)  # 400 before anything is queued
        run = self.gpt.run()
        refused = run.start([choice], self.gpt.deadline(body))
        if refused is not None:
            return refused
        draft = Response(
            model=body.model or self.gpt.settings.gpt_model_id,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            metadata=body.metadata or {},
            temperature=choice.params.temperature,
            top_logprobs=body.top_logprobs,
            top_p=choice.params.top_p,
            text=ResponseTextConfig(format=body.text.format or TextFormat()) if body.text else ResponseTextConfig(),
        )
        if body.stream:
            return self._stream(run, draft)
        failed = await run.finish(request)
        if failed is not None:
            return failed
        return self._finished(draft, run, OutputMessage())

    def _logprobs(self, records: list[TokenLogprob] | None) -> list[Any]:
        """Tokens with their logprobs as output_text carries them: chat's `logprobs.content`."""
        return [] if not records else list(self.chat.logprobs(records).content)

    def _finished(self, draft: Response, run: ChoiceRun, item: OutputMessage) -> Response:
        """The response once its one choice has ended: completed, or incomplete when it stopped at the token bound."""
        (choice,) = run.choices
        incomplete = choice.finish_reason == "length"
        usage = run.usage()
        item = item.model_copy(
            update={
                "status": "incomplete" if incomplete else "completed",
                "content": [OutputText(text=choice.text.text, logprobs=self._logprobs(choice.logprobs))],
            }
        )
        return draft.model_copy(
            update={
                "status": "incomplete" if incomplete else "completed",
                "completed_at": int(time.time()),
                "incomplete_details": IncompleteDetails(reason="max_output_tokens") if incomplete else None,
                "output": [item],
                "usage": ResponseUsage(
                    input_tokens=usage.prompt_tokens,
                    output_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                ),
            }
        )

    def _stream(self, run: ChoiceRun, draft: Response) -> Any:
        event = EventWriter()
        item = OutputMessage()
        at = {"item_id": item.id, "output_index": 0, "content_index": 0}
        opening = [
            event("response.created", response=draft),
            event("response.in_progress", response=draft),
            event("response.output_item.added", output_index=0, item=item),
            event("response.content_part.added", **at, part=OutputText(text="")),
        ]

        def frame(step: Step) -> list[str]:
            logprobs = self._logprobs(step.logprobs)
            if not step.delta and not logprobs:
                return []
            return [event("response.output_text.delta", **at, delta=step.delta, logprobs=logprobs)]

        def closing() -> str:
            final = self._finished(draft, run, item)
            (done,) = final.output
            part = done.content[0]
            return "".join(
                [
                    event("response.output_text.done", **at, text=part.text, logprobs=part.logprobs),
                    event("response.content_part.done", **at, part=part),
                    event("response.output_item.done", output_index=0, item=done),
                    event(f"response.{final.status}", response=final),
                ]
            )

        def failed(exc: BaseException) -> str:
            # The error event tells what failed, in our codes; response.failed ends the stream, in OpenAI's.
            error = stream_error(exc)["error"]
            response = draft.model_copy(
                update={"status": "failed", "error": ResponseError(code="server_error", message=error["message"])}
            )
            failure = event("error", code=error["code"], message=error["message"], param=error["param"])
            return failure + event("response.failed", response=response)

        return run.stream(opening, frame, closing, failed=failed, done=None)
