"""The GPT's HTTP side, in each API-server process: a LitServe spec with OpenAI's completions and model list, plus
tokenize/detokenize so a user can see what the model sees.

Here the prompt becomes token ids (checked against the context before anything is queued) and goes to the GPT worker
over the GPT channel (service/gpt_channel.py, not LitServe's queues); token ids coming back become text
(`TextStream`), OpenAI chunks and server-sent events. A client that goes away mid-stream sends a cancel control item
to the worker, which frees its batch slot at the next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.requests import Request
from transformers import GPT2Config, PreTrainedTokenizerFast

from model.engine import SamplingParams
from model.gpt import decode, encode, eot_id, load_tokenizer
from service.errors import error_content, openai_error
from service.gpt_channel import ChannelAddress, ChannelFull, ServerEnd
from service.gpt_worker import CANCEL, sampling_payload
from service.guards import Drain
from service.schemas.completions import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    FinishReason,
    Logprobs,
    ModelCard,
    ModelList,
    StreamChunk,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
    completion_id,
)
from service.settings import Settings
from service.textstream import TextStream

logger = logging.getLogger(__name__)


@dataclass
class Choice:
    """One generated sequence of a request: its queue uid and the state needed to answer for it."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    text: TextStream
    logprobs: Logprobs | None
    echo: str = ""  # the prompt, when the client asked for it back
    uid: str = ""
    finish_reason: FinishReason | None = None
    tokens: int = 0


class CompletionsSpec(LitSpec):
    def __init__(self, settings: Settings, channel: ChannelAddress) -> None:
        super().__init__()
        self.api_path = "/v1/completions"
        self.settings = settings
        self._tok: PreTrainedTokenizerFast | None = None
        self.context_length = 0
        self.vocab_size = 0
        self.created = int(time.time())
        self.address = channel
        # Made in each API-server process on its first request (after the fork): its end of the channel, the
        # task that spreads each step's message over the requests, and one buffer per open generation.
        self._channel: ServerEnd | None = None
        self._fanout: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._buffers: dict[str, ResponseBufferItem] = {}
        self.drain: Drain | None = None  # set by build_server: tells when a worker has died

    def __getstate__(self) -> dict[str, Any]:
        # The worker never tokenizes; keep the tokenizer out of the pickle that spawns it.
        state = super().__getstate__()
        state["_tok"] = None
        state["_fanout"] = None
        state["_watch"] = None
        state["_channel"] = None
        state["drain"] = None  # shared memory of the API servers; the spawned worker has no use for it
        return state

    @property
    def stream(self) -> bool:
        return True

    def pre_setup(self, lit_api: Any) -> None:
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/v1/tokenize", self.tokenize, ["POST"])
        self.add_endpoint("/v1/detokenize", self.detokenize, ["POST"])

    def setup(self, server: Any) -> None:
        super().setup(server)
        self.setup_tokenizer()

    def setup_tokenizer(self) -> None:
        """The tokenizer and the model's limits: all the spec needs of the model (tests call it alone)."""
        self._tok = load_tokenizer(self.settings.gpt_dir)
        config = GPT2Config.from_pretrained(self.settings.gpt_dir, local_files_only=True)
        self.context_length = int(config.n_positions)
        self.vocab_size = int(config.vocab_size)
        self.eot_id = eot_id(self._tok)

    @property
    def tok(self) -> PreTrainedTokenizerFast:
        assert self._tok is not None, "spec.setup() has not run"
        return self._tok

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output

    # ---- simple endpoints -------------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.gpt_model_id:
            raise HTTPException(
                404,
                openai_error(f"The model '{model}' does not exist.", "model", "model_not_found", "not_found_error"),
            )

    async def models(self) -> ModelList:
        return ModelList(
            data=[
                ModelCard(id=self.settings.gpt_model_id, created=self.created, max_model_len=self.context_length),
                ModelCard(id=self.settings.pixels_model_id, created=self.created),
            ]
        )

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        self.check_model(body.model)
        ids = encode(self.tok, body.prompt)
        return TokenizeResponse(
            count=len(ids),
            max_model_len=self.context_length,
            tokens=ids,
            token_strs=[decode(self.tok, [i]) for i in ids],
        )

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        self.check_model(body.model)
        bad = next((t for t in body.tokens if t >= self.vocab_size), None)
        if bad is not None:
            raise HTTPException(
                400,
                openai_error(f"token id {bad} is outside the vocabulary (size {self.vocab_size})", "tokens"),
            )
        return DetokenizeResponse(prompt=decode(self.tok, body.tokens))

    # ---- completions ------------------------------------------------------------------------------------------

    def _prompt_ids(self, prompt: str, max_tokens: int) -> list[int]:
        # An empty prompt starts from the document separator, as GPT-2 does.
        ids = encode(self.tok, prompt) or [self.eot_id]
        if len(ids) >= self.context_length:
            raise HTTPException(
                400,
                openai_error(
                    f"the prompt is {len(ids)} tokens; this model's context is {self.context_length} tokens",
                    "prompt",
                    "context_length_exceeded",
                ),
            )
        if len(ids) + max_tokens > self.context_length:
            raise HTTPException(
                400,
                openai_error(
                    f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the context of"
                    f" {self.context_length} tokens; ask for at most {self.context_length - len(ids)} tokens",
                    "max_tokens",
                    "context_length_exceeded",
                ),
            )
        return ids

    def _ensure_fanout(self) -> ServerEnd:
        """Open this API-server process's end of the channel and start its fan-out task, once."""
        if self._channel is None:
            self._channel = ServerEnd(self.address, self.response_queue_id)
        if self._fanout is None or self._fanout.done():
            self._fanout = asyncio.create_task(self._fan_out(self._channel))
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_worker())
        return self._channel

    async def _fan_out(self, channel: ServerEnd) -> None:
        """Spread each step's message from the worker over the buffers of the requests it names."""
        while True:
            try:
                box = await channel.receive()
            except asyncio.CancelledError:
                raise
            except Exception:  # an unreadable message loses its tokens, never the task
                logger.exception("reading the GPT channel failed")
                continue
            for uid, data, status in box:
                target = self._buffers.get(uid)
                if target is not None and target.response_queue is not None:
                    target.response_queue.append((data, status))
                    target.event.set()

    async def _watch_worker(self) -> None:
        """A worker died: end every open generation of this API server with a 503 instead of a hang."""
        while self.drain is None or not self.drain.failed:
            await asyncio.sleep(0.25)
        error = HTTPException(
            503, openai_error("the model worker died; the server is restarting", None, "worker_died", "server_error")
        )
        for item in list(self._buffers.values()):
            if item.response_queue is not None:
                item.response_queue.append((error, LitAPIStatus.ERROR))
                item.event.set()

    def _submit(self, prompt_ids: list[int], params: SamplingParams) -> str:
        channel = self._ensure_fanout()
        uid = str(uuid.uuid4())
        self._buffers[uid] = ResponseBufferItem(response_queue=deque(), event=asyncio.Event())
        try:
            channel.submit(uid, time.monotonic(), sampling_payload(prompt_ids, params))
        except ChannelFull:
            self._buffers.pop(uid, None)
            raise
        return uid

    def _cancel(self, uid: str) -> None:
        if self._channel is not None:
            self._channel.cancel(uid, time.monotonic(), CANCEL)

    async def _messages(self, choice: Choice) -> AsyncIterator[dict[str, Any]]:
        """Token messages of one choice from the worker; raises on a worker error.

        LitServe's `data_streamer` does the same over the same buffer, but yields (data, status) for the caller to
        check again: this runs once per token, so the buffer is read here directly."""
        item = self._buffers[choice.uid]
        queue, ready = item.response_queue, item.event
        assert queue is not None
        while True:
            while queue:
                data, status = queue.popleft()
                if status == LitAPIStatus.FINISH_STREAMING:
                    return
                if status == LitAPIStatus.ERROR:
                    raise data if isinstance(data, BaseException) else HTTPException(500, "worker error")
                yield data
            ready.clear()
            await ready.wait()

    def _apply(self, choice: Choice, msg: dict[str, Any]) -> str:
        """Fold one token message into the choice; return the text delta it releases."""
        delta = ""
        token = msg["token"]
        if token is not None:
            choice.tokens += 1
            if token != self.eot_id:  # end-of-text counts as generated but is never printed
                before = len(choice.text.text)
                delta = choice.text.push(token)
                if choice.logprobs is not None:
                    choice.logprobs.tokens.append(decode(self.tok, [token]))
                    choice.logprobs.token_logprobs.append(msg["logprob"])
                    choice.logprobs.top_logprobs.append({decode(self.tok, [t]): lp for t, lp in msg["top"] or []})
                    choice.logprobs.text_offset.append(len(choice.echo) + before)
        if choice.text.stopped:
            choice.finish_reason = "stop"
        elif msg["finish"] is not None:
            choice.finish_reason = msg["finish"]
            delta += choice.text.finish()
        return delta

    def _make_choices(self, body: CompletionRequest) -> list[Choice]:
        choices = []
        for p_idx, prompt in enumerate(body.prompts):
            prompt_ids = self._prompt_ids(prompt, body.max_tokens)
            for j in range(body.n):
                idx = p_idx * body.n + j
                # Each choice gets its own seed so n > 1 gives different samples, reproducibly.
                seed = None if body.seed is None else (body.seed + idx) % 2**63
                params = SamplingParams(
                    max_tokens=body.max_tokens,
                    temperature=body.temperature,
                    top_k=body.top_k,
                    top_p=body.top_p,
                    seed=seed,
                    stop_token_ids=(self.eot_id,),
                    logprobs=body.logprobs,
                )
                choices.append(
                    Choice(
                        index=idx,
                        prompt_ids=prompt_ids,
                        params=params,
                        text=TextStream(self.tok, body.stops),
                        logprobs=Logprobs() if body.logprobs is not None else None,
                        echo=prompt if body.echo else "",
                    )
                )
        return choices

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        choices = self._make_choices(body)  # raises 400 before anything is queued
        try:
            for c in choices:
                c.uid = self._submit(c.prompt_ids, c.params)
        except ChannelFull:
            self._release([c for c in choices if c.uid])
            return JSONResponse(
                status_code=503,
                headers={"Retry-After": "1"},
                content=openai_error(
                    "the model worker is not taking requests", None, "worker_unavailable", "server_error"
                ),
            )
        model = body.model or self.settings.gpt_model_id
        cid = completion_id()
        deadline = min(self.settings.request_deadline_seconds, body.timeout or float("inf"))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._stream(cid, model, choices, include_usage, deadline),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        work: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(self._collect(c) for c in choices)))
        # Starlette cancels only streaming handlers when the client goes away: watch for it here too.
        gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait([work, gone], timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                if gone.done():
                    return JSONResponse(status_code=499, content=openai_error("client closed the request"))
                # The client's own `timeout` running out is its request's doing (408); the server's deadline is 504.
                own = body.timeout is not None and body.timeout <= self.settings.request_deadline_seconds
                return JSONResponse(
                    status_code=408 if own else 504,
                    content=openai_error(
                        f"the request took longer than its deadline of {deadline:g} s",
                        "timeout",
                        "deadline_exceeded",
                        "invalid_request_error" if own else "server_error",
                    ),
                )
            work.result()
        except HTTPException as exc:
            return JSONResponse(status_code=exc.status_code, content=error_content(exc))
        finally:
            gone.cancel()
            self._release(choices)
        return Completion(
            id=cid,
            model=model,
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=c.echo + c.text.text,
                    logprobs=c.logprobs,
                    finish_reason=c.finish_reason,
                )  # type: ignore[arg-type]
                for c in choices
            ],
            usage=self._usage(choices),
        )

    async def _collect(self, choice: Choice) -> None:
        async for msg in self._messages(choice):
            self._apply(choice, msg)
            if choice.text.stopped and choice.finish_reason == "stop" and msg["finish"] is None:
                self._cancel(choice.uid)  # a stop string ended it; free the slot now
                break

    def _usage(self, choices: list[Choice]) -> Usage:
        prompt = sum(len(c.prompt_ids) for c in {id(c.prompt_ids): c for c in choices}.values())
        completion = sum(c.tokens for c in choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def _release(self, choices: list[Choice]) -> None:
        """Cancel what still runs and drop the buffers (LitServe's own spec leaks its buffers: upstream #452)."""
        for c in choices:
            if c.finish_reason is None:
                self._cancel(c.uid)
            self._buffers.pop(c.uid, None)
            if self._channel is not None:
                self._channel.release(c.uid)

    async def _events(self, choices: list[Choice]) -> AsyncGenerator[tuple[Choice, dict[str, Any] | None]]:
        """Token messages of all choices as they come; (choice, None) when a choice's stream has ended."""
        if len(choices) == 1:  # the common case: no merging tasks, two fewer task switches per token
            async for msg in self._messages(choices[0]):
                yield choices[0], msg
            yield choices[0], None
            return
        merged: asyncio.Queue[tuple[Choice, dict[str, Any] | None | BaseException]] = asyncio.Queue()

        async def pump(c: Choice) -> None:
            try:
                async for msg in self._messages(c):
                    await merged.put((c, msg))
                await merged.put((c, None))
            except Exception as exc:  # handed to the consumer, which ends the stream
                await merged.put((c, exc))

        tasks = [asyncio.create_task(pump(c)) for c in choices]
        try:
            for _ in range(len(choices) * (self.context_length + 2)):  # bounded: at most every token of each
                c, item = await merged.get()
                if isinstance(item, BaseException):
                    raise item
                yield c, item
        finally:
            for t in tasks:
                t.cancel()

    async def _stream(
        self, cid: str, model: str, choices: list[Choice], include_usage: bool, deadline: float
    ) -> AsyncIterator[str]:
        def error(exc: BaseException) -> str:
            return f"data: {json.dumps(error_content(exc))}\n\n"

        def expire() -> None:
            # One timer for the whole request rather than a timeout around each token's wait: the deadline arrives
            # as an error message in every choice's buffer, and the stream ends with it.
            late = HTTPException(
                504,
                openai_error(
                    f"the request took longer than its deadline of {deadline:g} s",
                    "timeout",
                    "deadline_exceeded",
                    "server_error",
                ),
            )
            for c in choices:
                item = self._buffers.get(c.uid)
                if item is not None and item.response_queue is not None:
                    item.response_queue.appendleft((late, LitAPIStatus.ERROR))  # before any token still queued
                    item.event.set()

        chunk = StreamChunk(cid, model)
        timer = asyncio.get_running_loop().call_later(deadline, expire)
        events = self._events(choices)
        try:
            for c in choices:
                if c.echo:  # the prompt comes first
                    yield chunk(c.index, c.echo, None)
            open_choices = len(choices)
            while open_choices:
                try:
                    c, msg = await anext(events)
                except Exception as exc:  # a worker error, an engine reset, the deadline: the client hears of it
                    yield error(exc)
                    break
                if msg is None:  # a choice's messages ended; its finish was counted when it came
                    if c.finish_reason is None:  # the worker ended it without a reason
                        yield error(HTTPException(500, "generation ended early"))
                        break
                    continue
                if c.finish_reason is not None:
                    continue  # already ended by a stop string; late tokens are dropped
                n_lp = len(c.logprobs.tokens) if c.logprobs is not None else 0
                delta = self._apply(c, msg)
                lp = None
                if c.logprobs is not None:
                    lp = Logprobs(
                        tokens=c.logprobs.tokens[n_lp:],
                        token_logprobs=c.logprobs.token_logprobs[n_lp:],
                        top_logprobs=c.logprobs.top_logprobs[n_lp:],
                        text_offset=c.logprobs.text_offset[n_lp:],
                    )
                if delta or c.finish_reason is not None or (lp is not None and lp.tokens):
                    yield chunk(c.index, delta, c.finish_reason, lp)
                if c.finish_reason is not None:
                    if msg["finish"] is None:
                        self._cancel(c.uid)  # stopped by a stop string: free the slot
                    open_choices -= 1
            else:
                if include_usage:
                    usage = Completion(
                        id=cid, created=chunk.created, model=model, choices=[], usage=self._usage(choices)
                    )
                    yield f"data: {usage.model_dump_json()}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            # Runs on normal end, on error, and when Starlette cancels us because the client went away.
            timer.cancel()
            await events.aclose()
            self._release(choices)


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
