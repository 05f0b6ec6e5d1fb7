"""One request's choices on the GPT, for every protocol in front of it: submitted together (all or none), their
tokens folded into text (`TextStream`) and logprobs as they come, closed together (which cancels what still runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request
from transformers import PreTrainedTokenizerFast

from model.engine import PromptLogprob
from model.gpt import decode, token_bytes
from model.sampling import SamplingParams
from service.api.errors import error_content, failure_body, failure_response, openai_error
from service.api.gpt.textstream import TextStream
from service.api.sse import DONE, SSE_HEADERS, sse
from service.schemas.completions import Usage
from service.transport.client import RequestFailed
from service.transport.gpt_client import Deadline, GenerateClient, Generation, WorkerUnavailable
from service.transport.messages import Failure, FinishReason, Token


@dataclass
class TokenLogprob:
    """One token as logprobs report it: its text, log-probability, best alternatives, and where it starts in the
    choice's text (a prompt token: in the prompt's). A prompt's first token has no logprob: nothing came before."""

    id: int
    text: str
    logprob: float | None
    top: list[tuple[int, str, float]]  # (token id, text, logprob), best first
    offset: int


def char_offsets(tok: PreTrainedTokenizerFast, ids: list[int]) -> list[int]:
    """Where each token's text starts, in characters of the decoded text: a token that begins inside a character
    (byte-level BPE splits some) starts where that character does."""
    offsets, data = [], b""
    for token_id in ids:
        offsets.append(len(data.decode("utf-8", "ignore")))
        data += token_bytes(tok, token_id)
    return offsets


@dataclass(eq=False)
class Choice:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    text: TextStream
    logprobs: list[TokenLogprob] | None = None  # None when not asked for
    grammar: str | None = None  # what the output must follow (service/api/gpt/structured.py)
    prompt_logprobs: list[TokenLogprob] | None = None  # the prompt's, when asked for: on the first token event
    held: list[TokenLogprob] = field(default_factory=list)  # of tokens whose text is held back
    logprob_sum: float = 0.0  # of the generated tokens that came with a logprob (best_of ranks by the mean)
    generation: Generation | None = None
    finish_reason: FinishReason | None = None
    tokens: int = 0  # generated, end-of-text included


@dataclass
class Step:
    """What one token event released for one choice: text, log-probabilities, and its finish when it ended."""

    choice: Choice
    delta: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt: list[TokenLogprob] | None = None  # the prompt's logprobs, on the choice's first step when asked for

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.choice.finish_reason


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


WORKER_UNAVAILABLE = Failure("", 503, "worker_unavailable", "the model worker is not taking requests")


def stream_error(exc: BaseException) -> dict[str, Any]:
    """OpenAI's error body for an error after a stream started."""
    if isinstance(exc, RequestFailed):
        return failure_body(exc.failure)
    return openai_error("internal error", None, "internal_error", "server_error")


def _error_event(exc: BaseException) -> str:
    """The error chunk of a stream that has started: OpenAI's error object as a data event."""
    return sse(stream_error(exc))


class ChoiceRun:
    """The choices of one request, from submission to close (use it as a context manager)."""

    def __init__(self, client: GenerateClient, tokenizer: PreTrainedTokenizerFast, eot_id: int) -> None:
        self.client = client
        self.tok = tokenizer
        self.eot_id = eot_id
        self.choices: list[Choice] = []

    def submit(self, choices: list[Choice], deadline: Deadline) -> None:
        """Submit every choice; raises `WorkerUnavailable` (having closed what went out) if one cannot go."""
        self.choices = choices
        for c in choices:
            c.generation = self.client.generate(c.prompt_ids, c.params, deadline, c.grammar)

    def start(self, choices: list[Choice], deadline: Deadline) -> JSONResponse | None:
        """Submit the choices; None when they run, else the 503 to answer (nothing of the request is left)."""
        try:
            self.submit(choices, deadline)
        except WorkerUnavailable:
            self.close()
            response = failure_response(WORKER_UNAVAILABLE)
            response.headers["Retry-After"] = "1"
            return response
        return None

    async def finish(self, request: Request | None) -> JSONResponse | None:
        """Run a plain (not streamed) request to its end and close it; None when done, else the error to answer."""
        with self:
            try:
                await self.collect(request)
            except ClientGone:
                return JSONResponse(status_code=499, content=openai_error("client closed the request"))
            except RequestFailed as exc:
                return failure_response(exc.failure)
            except HTTPException as exc:
                return JSONResponse(status_code=exc.status_code, content=error_content(exc))
        return None

    def stream(
        self,
        opening: Iterable[str],
        frame: Callable[[Step], Iterable[str]],
        closing: Callable[[], str] | None,
        failed: Callable[[BaseException], str] = _error_event,
        done: str | None = DONE,
    ) -> StreamingResponse:
        """The server-sent events of a streamed request: `opening`, each step as `frame` writes it, the `closing`
        events (chat: the usage chunk), then `done`; an error after the start is told by `failed`, and it ends."""

        async def events() -> AsyncIterator[str]:
            with self:  # closed on the normal end, on an error, and when Starlette cancels us as the client left
                for event in opening:
                    yield event
                try:
                    async for step in self.steps():
                        for event in frame(step):
                            yield event
                except Exception as exc:  # a worker error, an engine reset, the deadline: the client hears of it
                    yield failed(exc)
                else:
                    if closing is not None:
                        yield closing()
                if done is not None:
                    yield done

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    def close(self) -> None:
        for c in self.choices:
            if c.generation is not None:
                c.generation.close()

    def __enter__(self) -> ChoiceRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def usage(self) -> Usage:
        """Tokens of the request: a prompt shared by n choices counts once."""
        prompt = sum({id(c.prompt_ids): len(c.prompt_ids) for c in self.choices}.values())
        completion = sum(c.tokens for c in self.choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def steps(self) -> AsyncIterator[Step]:
        """Every choice's steps, as they come, until all have finished; raises `RequestFailed`."""
        async for choice, token in self._events():
            if choice.finish_reason is not None:
                continue  # already ended by a stop string; a late token is dropped
            step = self._apply(choice, token)
            if choice.text.stopped and token.finish is None:
                assert choice.generation is not None
                choice.generation.close()  # a stop string ended it: free the batch slot now
            if step.delta or step.logprobs or step.prompt is not None or choice.finish_reason is not None:
                yield step

    async def collect(self, request: Request | None) -> None:
        """Run every choice to its end; raises `RequestFailed`, or `ClientGone` if the client leaves first."""

        async def run() -> None:
            async for _ in self.steps():
                pass

        work = asyncio.ensure_future(run())
        # Starlette cancels only streaming handlers when the client goes away: watch for it here.
        gone = asyncio.ensure_future(_disconnected(request) if request is not None else asyncio.Event().wait())
        try:
            await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                raise ClientGone
            work.result()
        finally:
            work.cancel()
            gone.cancel()

    def _apply(self, choice: Choice, token: Token) -> Step:
        """Fold one token event into its choice."""
        step = Step(choice, "")
        if token.prompt is not None and choice.logprobs is not None:
            choice.prompt_logprobs = step.prompt = self._prompt_records(choice.prompt_ids, token.prompt)
        if token.logprob is not None:
            choice.logprob_sum += token.logprob
        if token.token is not None:
            choice.tokens += 1
            if token.token != self.eot_id:  # end-of-text counts as generated but is never printed
                start = choice.text.decoded_length
                step.delta = choice.text.push(token.token)
                if choice.logprobs is not None:
                    record = TokenLogprob(
                        token.token,
                        decode(self.tok, [token.token]),
                        token.logprob,
                        [(t, decode(self.tok, [t]), lp) for t, lp in token.top or []],
                        start,
                    )
                    choice.held.append(record)
        if choice.text.stopped:
            choice.finish_reason = "stop"
        elif token.finish is not None:
            choice.finish_reason = token.finish
            step.delta += choice.text.finish()
        if choice.logprobs is not None:
            # A token's logprobs go out with its text: held while its text is held back, dropped when a stop cut
            # it off (the stop string's tokens are not the reply's), all released at any other end.
            shown, dropped = choice.text.shown_length, choice.text.dropped
            everything = choice.finish_reason is not None and not choice.text.stopped
            released = [r for r in choice.held if everything or r.offset < shown]
            choice.held = [] if choice.finish_reason is not None else choice.held[len(released) :]
            # Tokens wholly in what a speech dropped before its first words are not the reply's either.
            step.logprobs = [r for r in released if r.offset + len(r.text) > dropped]
            choice.logprobs.extend(step.logprobs)
        return step

    def _prompt_records(self, ids: list[int], scores: list[PromptLogprob]) -> list[TokenLogprob]:
        """The prompt's tokens as logprobs report them; the engine scores each one but the first."""
        texts = [decode(self.tok, [t]) for t in ids]
        offsets = char_offsets(self.tok, ids)
        records = [TokenLogprob(ids[0], texts[0], None, [], 0)]
        for i, (logprob, top) in enumerate(scores, 1):
            alternatives = [(t, decode(self.tok, [t]), lp) for t, lp in top]
            records.append(TokenLogprob(ids[i], texts[i], logprob, alternatives, offsets[i]))
        return records

    async def _events(self) -> AsyncIterator[tuple[Choice, Token]]:
        """Token events of all choices, merged in arrival order."""
        if len(self.choices) == 1:  # the common case: no merging tasks, two fewer task switches per token
            only = self.choices[0]
            assert only.generation is not None
            async for token in only.generation:
                yield only, token
            return
        merged: asyncio.Queue[tuple[Choice, Token | BaseException | None]] = asyncio.Queue()

        async def pump(c: Choice) -> None:
            assert c.generation is not None
            try:
                async for token in c.generation:
                    await merged.put((c, token))
                await merged.put((c, None))
            except Exception as exc:  # handed to the consumer, which ends the request
                await merged.put((c, exc))

        tasks = [asyncio.create_task(pump(c)) for c in self.choices]
        try:
            running = len(tasks)
            while running:
                c, item = await merged.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield c, item
        finally:
            for t in tasks:
                t.cancel()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
