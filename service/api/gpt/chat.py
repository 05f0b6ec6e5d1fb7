"""OpenAI's chat completions protocol, `POST /v1/chat/completions`, on the same GPT client as completions.

The messages become a prompt through the model folder's chat template (`apply_chat_template`, exactly as Hugging
Face renders it from the folder): a scene of a play, each message a speech under its speaker's heading, ending with
the assistant speaker's heading. The reply is that speaker's speech: it ends at a blank line or at the next
speaker's heading (`SpeechStream`), with finish_reason `stop`. Sampling, batching, guards and the deadline are the
completions' own (service/api/gpt/choices.py). A reply under a grammar (`response_format`, `structured_outputs`, a
forced tool call: service/api/gpt/structured.py) ends where the grammar does, not at a speech's end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, cast

from starlette.requests import Request

from model.gpt import token_bytes
from service.api.errors import bad_request
from service.api.gpt.choices import Choice, ChoiceRun, Step
from service.api.gpt.choices import TokenLogprob as Record
from service.api.gpt.served import ServedGPT
from service.api.gpt.structured import ForcedCall, grammar_of, tool_call_id
from service.api.gpt.textstream import SpeechStream, TextStream
from service.api.sse import sse_json
from service.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatMessage,
    ChunkChoice,
    Delta,
    FunctionDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    chat_completion_id,
    speaker_heading,
)
from service.schemas.completions import FinishReason, Usage
from service.schemas.sampling import SamplingRequest


class Chat:
    def __init__(self, gpt: ServedGPT) -> None:
        self.gpt = gpt

    def render(self, messages: list[ChatMessage]) -> str:
        """The prompt for `messages`, as `AutoTokenizer.from_pretrained(folder).apply_chat_template` renders it.

        `developer` is OpenAI's newer name for `system`; a name becomes one heading line (`speaker_heading`), so
        that no name can open a speech of its own or end one."""
        conversation: list[dict[str, Any]] = []
        called = {c.id: c.function.name for m in messages for c in m.tool_calls or []}
        for m in messages:
            # A tool's answer is headed by the function it answers, when the call is in the chat.
            name = speaker_heading(m.name or called.get(m.tool_call_id or "", ""))
            role = "system" if m.role == "developer" else m.role
            message: dict[str, Any] = {"role": role, "content": m.text, **({"name": name} if name else {})}
            if m.tool_calls:
                message["tool_calls"] = [{"type": "function", "function": dict(c.function)} for c in m.tool_calls]
            conversation.append(message)
        settings = self.gpt.settings
        prompt = self.gpt.tok.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=False,
            user_speaker=settings.chat_user_speaker,
            assistant_speaker=settings.chat_assistant_speaker,
        )
        return cast(str, prompt)

    def reply(
        self, body: SamplingRequest, prompt_ids: list[int], index: int, logprobs: bool, grammar: str | None = None
    ) -> Choice:
        """One assistant reply to `prompt_ids` (chat's and the Responses API's): a speech, unless `ignore_eos` or a
        `grammar` (which ends it where the grammar is complete)."""
        # A speech says something before it ends: end-of-text cannot be its first token (the engine masks it).
        params = replace(self.gpt.params(body, prompt_ids, index), min_tokens=max(1, body.min_tokens))
        # ignore_eos: the end of a speech is this model's end of turn, so generation runs past it too.
        text: TextStream = (
            TextStream(self.gpt.tok, body.stops, params.min_tokens)
            if body.ignore_eos or grammar is not None
            else SpeechStream(self.gpt.tok, body.stops, params.min_tokens)
        )
        return Choice(index, prompt_ids, params, text, logprobs=[] if logprobs else None, grammar=grammar)

    def _choices(self, body: ChatCompletionRequest, forced: ForcedCall | None) -> list[Choice]:
        refused = body.unsupported()
        if refused is not None:
            param, why = refused
            raise bad_request(why, param, "unsupported_parameter")
        grammar = grammar_of(forced.ask() if forced is not None else body.grammar_ask())
        prompt_ids = self.gpt.prompt_ids(self.render(body.messages), param="messages")
        return [self.reply(body, prompt_ids, i, bool(body.logprobs), grammar) for i in range(body.n)]

    async def create(self, body: ChatCompletionRequest, request: Request) -> Any:
        self.gpt.check_model(body.model)
        tools = body.forced_tools()
        forced = ForcedCall(tools) if tools else None
        choices = self._choices(body, forced)  # 400 before anything is queued
        run = self.gpt.run()
        refused = run.start(choices, self.gpt.deadline(body))
        if refused is not None:
            return refused
        model = body.model or self.gpt.settings.gpt_model_id
        cid = chat_completion_id()
        if body.stream:
            return self._stream(run, cid, model, body.include_usage, forced)
        failed = await run.finish(request)
        if failed is not None:
            return failed
        return ChatCompletion(
            id=cid,
            model=model,
            choices=[
                ChatChoice(
                    index=c.index,
                    message=(
                        AssistantMessage(content=c.text.text)
                        if forced is None
                        else AssistantMessage(
                            content=None,
                            tool_calls=[forced.call(c.text.text, tool_call_id(), c.finish_reason == "stop")],
                        )
                    ),
                    logprobs=None if c.logprobs is None else self.logprobs(c.logprobs),
                    finish_reason=_called(c.finish_reason) if forced is not None else c.finish_reason,
                )
                for c in choices
            ],
            usage=run.usage(),
        )

    def _stream(self, run: ChoiceRun, cid: str, model: str, include_usage: bool, forced: ForcedCall | None) -> Any:
        frame = ChatCompletionChunk(id=cid, created=int(time.time()), model=model, choices=[])

        def event(*choices: ChunkChoice, usage: Usage | None = None) -> str:
            chunk = frame.model_copy(update={"choices": list(choices), "usage": usage})
            return sse_json(chunk.model_dump_json())

        call_ids = {c.index: tool_call_id() for c in run.choices}
        # Characters of each choice's arguments sent; a named call's head goes out in its opening delta.
        sent = {c.index: 0 for c in run.choices} if forced is not None and forced.named is not None else {}

        def delta(step: Step) -> Delta | None:
            """The step's text as content, or as more of a tool call's arguments (of several tools, the call's id
            and name first, once its name is whole)."""
            if forced is None:
                return Delta(content=step.delta) if step.delta or step.logprobs else None
            index = step.choice.index
            complete = None if step.finish_reason is None else step.finish_reason == "stop"
            found = forced.split(step.choice.text.text, complete)
            if found is None:
                return Delta() if step.logprobs else None
            name, arguments = found
            new = arguments[sent.get(index, 0) :]
            if index not in sent:
                head = FunctionDelta(name=name, arguments=new)
                piece = ToolCallDelta(index=0, id=call_ids[index], type="function", function=head)
            elif new:
                piece = ToolCallDelta(index=0, function=FunctionDelta(arguments=new))
            else:
                return Delta() if step.logprobs else None
            sent[index] = len(arguments)
            return Delta(tool_calls=[piece])

        def steps(step: Step) -> Iterable[str]:
            index = step.choice.index
            found = delta(step)
            if found is not None:
                logprobs = None if step.choice.logprobs is None else self.logprobs(step.logprobs)
                yield event(ChunkChoice(index=index, delta=found, logprobs=logprobs))
            if step.finish_reason is not None:
                finish = _called(step.finish_reason) if forced is not None else step.finish_reason
                yield event(ChunkChoice(index=index, delta=Delta(), finish_reason=finish))

        # The first delta of each choice carries the role, as OpenAI's do; a named call's, its id and name.
        opening = [event(ChunkChoice(index=c.index, delta=_opening(forced, call_ids[c.index]))) for c in run.choices]
        usage = (lambda: event(usage=run.usage())) if include_usage else None
        return run.stream(opening, steps, usage)

    def logprobs(self, records: list[Record]) -> ChatLogprobs:
        """OpenAI's chat logprobs: each token with its bytes (a token may hold part of a character) and its best
        alternatives."""
        tok = self.gpt.tok

        def top(token_id: int, text: str, logprob: float) -> TopLogprob:
            return TopLogprob(token=text, logprob=logprob, bytes=list(token_bytes(tok, token_id)))

        return ChatLogprobs(
            content=[
                TokenLogprob(
                    token=r.text,
                    logprob=r.logprob if r.logprob is not None else 0.0,
                    bytes=list(token_bytes(tok, r.id)),
                    top_logprobs=[top(*alternative) for alternative in r.top],
                )
                for r in records
            ]
        )


def _opening(forced: ForcedCall | None, call_id: str) -> Delta:
    """A choice's first delta: the role, and a named call's id and name (its arguments follow)."""
    if forced is None or forced.named is None:
        return Delta(role="assistant", content="" if forced is None else None)
    head = FunctionDelta(name=forced.named, arguments="")
    return Delta(role="assistant", tool_calls=[ToolCallDelta(index=0, id=call_id, type="function", function=head)])


def _called(finish: FinishReason | None) -> FinishReason | None:
    """A forced call's finish: `tool_calls` when its arguments are complete, else as it ended (`length`)."""
    return "tool_calls" if finish == "stop" else finish
