"""One request's choices on the GPT, for every protocol in front of it (completions, chat).

A request asks for one or more choices (prompts x n). Here they are submitted together (all or none: a full channel
is a 503 before any answer starts), their token events merged as they come, each folded into its choice's text
(`TextStream`: whole characters, stop strings cut) and log-probabilities, and closed together, which cancels on the
worker whatever still runs. The protocol modules only turn the resulting steps into their own JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request
from transformers import GPT2Config, PreTrainedTokenizerFast

from model.engine import PromptLogprob
from model.gpt import decode, encode, eot_id, load_tokenizer, token_bytes
from model.sampling import SamplingParams
from service.errors import bad_request, error_content, model_not_found, openai_error
from service.gpt_client import Deadline, GenerateClient, Generation, GenerationFailed, WorkerUnavailable
from service.gpt_protocol import Failure, FinishReason, Token
from service.schemas.completions import Usage
from service.schemas.sampling import SamplingDefaults, SamplingRequest
from service.settings import Settings
from service.textstream import TextStream


@dataclass(frozen=True)
class ServedGPT:
    """What the HTTP side knows of the GPT: its tokenizer (with the chat template), limits, the server's sampling
    defaults, and the client that reaches its workers. Read from the model folder alone, without the weights."""

    settings: Settings
    client: GenerateClient
    tok: PreTrainedTokenizerFast
    context_length: int
    vocab_size: int
    eot_id: int
    defaults: SamplingDefaults

    @classmethod
    def load(cls, settings: Settings, client: GenerateClient) -> ServedGPT:
        tok = load_tokenizer(settings.gpt_dir)
        config = GPT2Config.from_pretrained(settings.gpt_dir, local_files_only=True)
        defaults = SamplingDefaults.from_folder(settings.gpt_dir)
        return cls(settings, client, tok, int(config.n_positions), int(config.vocab_size), eot_id(tok), defaults)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.gpt_model_id:
            raise model_not_found(model)

    def prompt_ids(self, prompt: str | list[int], param: str = "prompt", room: int = 1) -> list[int]:
        """The prompt's token ids (a text is tokenized, ids are taken as they are), or a 400 naming `param` when it
        leaves fewer than `room` tokens of the context (0: a prompt only scored may fill it)."""
        if isinstance(prompt, str):
            ids = encode(self.tok, prompt) or [self.eot_id]  # an empty prompt starts from the separator, as GPT-2's
        else:
            ids = list(prompt)
        if len(ids) > self.context_length - room:
            message = f"the prompt is {len(ids)} tokens; this model's context is {self.context_length} tokens"
            raise bad_request(message, param, "context_length_exceeded")
        return ids

    def params(self, body: SamplingRequest, prompt_ids: list[int], index: int) -> SamplingParams:
        """The request's sampling parameters for one choice, or a 400 naming the parameter that cannot be served:
        one not supported, a logit_bias id outside the vocabulary, max_tokens past the context or below min_tokens."""
        refused = body.refused_parameter()
        if refused is not None:
            raise bad_request(f"{refused} is not supported by this server", refused, "unsupported_parameter")
        bad_bias = body.logit_bias_error(self.vocab_size)
        if bad_bias is not None:
            raise bad_request(f"{bad_bias}: token id outside the vocabulary (size {self.vocab_size})", bad_bias)
        room = self.context_length - len(prompt_ids)
        params = body.to_sampling_params(self.defaults, room=room, index=index, stop_token_ids=(self.eot_id,))
        if params.max_tokens > room:
            message = (
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context of"
                f" {self.context_length} tokens; ask for at most {room} tokens"
            )
            raise bad_request(message, "max_tokens", "context_length_exceeded")
        if params.min_tokens > params.max_tokens:
            message = f"min_tokens ({params.min_tokens}) exceeds max_tokens ({params.max_tokens})"
            raise bad_request(message, "min_tokens")
        return params

    def deadline(self, body: SamplingRequest) -> Deadline:
        return Deadline.of(self.settings.request_deadline_seconds, body.timeout)

    def run(self) -> ChoiceRun:
        return ChoiceRun(self.client, self.tok, self.eot_id)


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


def failure_response(failure: Failure) -> JSONResponse:
    kind = "invalid_request_error" if failure.status < 500 else "server_error"
    # The client's own timeout ran out: the openai SDK would retry a 408 twice, tripling the work for nothing.
    headers = {"x-should-retry": "false"} if failure.status == 408 else None
    return JSONResponse(
        status_code=failure.status,
        content=openai_error(failure.message, failure.param, failure.code, kind),
        headers=headers,
    )


def failure_body(exc: BaseException) -> dict[str, Any]:
    """The error chunk of a stream that has started: OpenAI's error object."""
    if isinstance(exc, GenerationFailed):
        f = exc.failure
        return openai_error(f.message, f.param, f.code, "invalid_request_error" if f.status < 500 else "server_error")
    return openai_error("internal error", None, "internal_error", "server_error")


def sse(body: dict[str, Any]) -> str:
    """One server-sent event carrying `body` as JSON."""
    return f"data: {json.dumps(body)}\n\n"


WORKER_UNAVAILABLE = Failure("", 503, "worker_unavailable", "the model worker is not taking requests")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
            c.generation = self.client.generate(c.prompt_ids, c.params, deadline)

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
            except GenerationFailed as exc:
                return failure_response(exc.failure)
            except HTTPException as exc:
                return JSONResponse(status_code=exc.status_code, content=error_content(exc))
        return None

    def stream(
        self, opening: Iterable[str], frame: Callable[[Step], Iterable[str]], usage: Callable[[], str] | None
    ) -> StreamingResponse:
        """The server-sent events of a streamed request: `opening`, each step as `frame` writes it, the usage
        event when asked for, then [DONE]; an error after the start arrives as a data event, and the stream ends."""

        async def events() -> AsyncIterator[str]:
            with self:  # closed on the normal end, on an error, and when Starlette cancels us as the client left
                for event in opening:
                    yield event
                try:
                    async for step in self.steps():
                        for event in frame(step):
                            yield event
                except Exception as exc:  # a worker error, an engine reset, the deadline: the client hears of it
                    yield sse(failure_body(exc))
                else:
                    if usage is not None:
                        yield usage()
                yield "data: [DONE]\n\n"

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
        """Every choice's steps, as they come, until all have finished; raises `GenerationFailed`."""
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
        """Run every choice to its end; raises `GenerationFailed`, or `ClientGone` if the client leaves first."""

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
            shown = len(choice.text.text)
            everything = choice.finish_reason is not None and not choice.text.stopped
            step.logprobs = [r for r in choice.held if everything or r.offset < shown]
            choice.held = [] if choice.finish_reason is not None else choice.held[len(step.logprobs) :]
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
