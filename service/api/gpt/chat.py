"""OpenAI's chat completions protocol, `POST /v1/chat/completions`, on the same GPT client as completions.

The messages become a prompt through the model folder's chat template (`apply_chat_template`, exactly as Hugging
Face renders it from the folder): a scene of a play, each message a speech under its speaker's heading, ending with
the assistant speaker's heading. The reply is that speaker's speech: it ends at a blank line or at the next
speaker's heading (`SpeechStream`), with finish_reason `stop`. Sampling, batching, guards and the deadline are the
completions' own (service/api/gpt/choices.py).
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
    TokenLogprob,
    TopLogprob,
    chat_completion_id,
    speaker_heading,
)
from service.schemas.completions import Usage
from service.schemas.sampling import SamplingRequest


class Chat:
    def __init__(self, gpt: ServedGPT) -> None:
        self.gpt = gpt

    def render(self, messages: list[ChatMessage]) -> str:
        """The prompt for `messages`, as `AutoTokenizer.from_pretrained(folder).apply_chat_template` renders it.

        `developer` is OpenAI's newer name for `system`; a name becomes one heading line (`speaker_heading`), so
        that no name can open a speech of its own or end one."""
        conversation = []
        for m in messages:
            name = speaker_heading(m.name or "")
            role = "system" if m.role == "developer" else m.role
            conversation.append({"role": role, "content": m.text, **({"name": name} if name else {})})
        settings = self.gpt.settings
        prompt = self.gpt.tok.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=False,
            user_speaker=settings.chat_user_speaker,
            assistant_speaker=settings.chat_assistant_speaker,
        )
        return cast(str, prompt)

    def reply(self, body: SamplingRequest, prompt_ids: list[int], index: int, logprobs: bool) -> Choice:
        """One assistant reply to `prompt_ids` (chat's and the Responses API's): a speech, unless `ignore_eos`."""
        # A speech says something before it ends: end-of-text cannot be its first token (the engine masks it).
        params = replace(self.gpt.params(body, prompt_ids, index), min_tokens=max(1, body.min_tokens))
        # ignore_eos: the end of a speech is this model's end of turn, so generation runs past it too.
        text: TextStream = (
            TextStream(self.gpt.tok, body.stops, params.min_tokens)
            if body.ignore_eos
            else SpeechStream(self.gpt.tok, body.stops, params.min_tokens)
        )
        return Choice(index, prompt_ids, params, text, logprobs=[] if logprobs else None)

    def _choices(self, body: ChatCompletionRequest) -> list[Choice]:
        refused = body.unsupported()
        if refused is not None:
            param, why = refused
            raise bad_request(why, param, "unsupported_parameter")
        prompt_ids = self.gpt.prompt_ids(self.render(body.messages), param="messages")
        return [self.reply(body, prompt_ids, i, bool(body.logprobs)) for i in range(body.n)]

    async def create(self, body: ChatCompletionRequest, request: Request) -> Any:
        self.gpt.check_model(body.model)
        choices = self._choices(body)  # 400 before anything is queued
        run = self.gpt.run()
        refused = run.start(choices, self.gpt.deadline(body))
        if refused is not None:
            return refused
        model = body.model or self.gpt.settings.gpt_model_id
        cid = chat_completion_id()
        if body.stream:
            return self._stream(run, cid, model, body.include_usage)
        failed = await run.finish(request)
        if failed is not None:
            return failed
        return ChatCompletion(
            id=cid,
            model=model,
            choices=[
                ChatChoice(
                    index=c.index,
                    message=AssistantMessage(content=c.text.text),
                    logprobs=None if c.logprobs is None else self.logprobs(c.logprobs),
                    finish_reason=c.finish_reason,
                )
                for c in choices
            ],
            usage=run.usage(),
        )

    def _stream(self, run: ChoiceRun, cid: str, model: str, include_usage: bool) -> Any:
        frame = ChatCompletionChunk(id=cid, created=int(time.time()), model=model, choices=[])

        def event(*choices: ChunkChoice, usage: Usage | None = None) -> str:
            chunk = frame.model_copy(update={"choices": list(choices), "usage": usage})
            return sse_json(chunk.model_dump_json())

        def steps(step: Step) -> Iterable[str]:
            index = step.choice.index
            if step.delta or step.logprobs:
                logprobs = None if step.choice.logprobs is None else self.logprobs(step.logprobs)
                yield event(ChunkChoice(index=index, delta=Delta(content=step.delta), logprobs=logprobs))
            if step.finish_reason is not None:
                yield event(ChunkChoice(index=index, delta=Delta(), finish_reason=step.finish_reason))

        # The first delta of each choice carries the role, as OpenAI's do.
        opening = [event(ChunkChoice(index=c.index, delta=Delta(role="assistant", content=""))) for c in run.choices]
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
