"""A scripted GPT worker behind the real GPT client, and the GPT's HTTP app around it, all in one process.

The client (transport/gpt_client.py) runs as in the server: its buffers, fan-out, deadline and worker watch are the
real ones; only its end of the channel is replaced by `ScriptedWorker`, which answers each `Submit` with the
tokens of a scripted text, some per step (under a grammar, a token the grammar forbids is a Failure: the script must
fit what the request asked for). Needs the model folder's tokenizer and config, never its weights.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI
from transformers import PreTrainedTokenizerFast

from model.gpt import encode
from model.grammar import Grammars
from service.api.errors import install_error_handlers
from service.api.gpt.routes import GPTRoutes
from service.api.gpt.served import ServedGPT
from service.settings import Settings
from service.transport.channel import ChannelAddress
from service.transport.gpt_client import GPTClient
from service.transport.messages import Cancel, Failure, FinishReason, GPTReply, Submit, Token

# What the worker answers a submit with: the text to generate, or a Failure, given the Submit.
Script = Callable[[Submit], "str | Failure"]


@dataclass
class ScriptedWorker:
    """Stands in for the channel's `ServerEnd`: a submit is answered from `script`, `per_step` tokens a message."""

    script: Script
    tok: PreTrainedTokenizerFast
    eot_id: int
    per_step: int = 1
    step_seconds: float = 0.0
    fail_after: int | None = None  # tokens sent before a Failure (an engine error mid-stream)
    logprob_of: Callable[[Submit], float] = lambda _: -0.5  # every token's logprob, given the request
    submitted: list[Submit] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    _inbox: asyncio.Queue[list[GPTReply]] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: set[str] = field(default_factory=set)

    def submit(self, message: Submit) -> None:
        self.submitted.append(message)
        self._tasks.append(asyncio.get_running_loop().create_task(self._generate(message)))

    def send_after(self, uid: str, item: object) -> None:
        assert isinstance(item, Cancel) and item.uid == uid
        self.cancel(uid)

    def cancel(self, uid: str) -> None:
        self.cancelled.append(uid)
        if uid not in self._stopped:
            self._stopped.add(uid)
            self._inbox.put_nowait([Token(uid, None, None, None, "cancelled")])

    def release(self, uid: str) -> None:
        self.released.append(uid)

    async def receive(self) -> list[GPTReply]:
        return await self._inbox.get()

    async def _generate(self, message: Submit) -> None:
        answer = self.script(message)
        if isinstance(answer, Failure):
            self._inbox.put_nowait([answer._replace(uid=message.uid)])
            return
        params = message.params
        # Scored prompts as the engine scores them: each token but the first, -1 and the token itself as the top one.
        prompt = None if params.prompt_logprobs is None else [(-1.0, [(t, -1.0)]) for t in message.prompt_ids[1:]]
        if params.max_tokens == 0:
            self._inbox.put_nowait([Token(message.uid, None, None, None, "length", prompt)])
            return
        ids = encode(self.tok, answer)[: params.max_tokens]
        finish: FinishReason = "length" if len(ids) == params.max_tokens else "stop"
        if finish == "stop":
            ids.append(self.eot_id)
        if message.grammar is not None and not self._fits(message.grammar, ids, finish):
            self._inbox.put_nowait([Failure(message.uid, 500, "engine_error", f"the grammar forbids {answer!r}")])
            return
        value = self.logprob_of(message)
        for start in range(0, len(ids), self.per_step):
            await asyncio.sleep(self.step_seconds)
            if message.uid in self._stopped:
                return
            if self.fail_after is not None and start >= self.fail_after:
                self._stopped.add(message.uid)
                self._inbox.put_nowait([Failure(message.uid, 500, "engine_error", "the engine failed")])
                return
            batch: list[Token] = []
            for i, token in enumerate(ids[start : start + self.per_step], start):
                last = i == len(ids) - 1
                top = [(token, value), (self.eot_id, -1.5)] if params.logprobs else None
                logprob = value if params.logprobs is not None else None
                batch.append(
                    Token(message.uid, token, logprob, top, finish if last else None, prompt if i == 0 else None)
                )
            if batch[-1].finish is not None:
                self._stopped.add(message.uid)
            self._inbox.put_nowait(list[GPTReply](batch))

    def _fits(self, grammar: str, ids: list[int], finish: FinishReason) -> bool:
        """Whether the grammar allows `ids` token by token (and, when they end, ends there)."""
        row = _grammars(self.tok).row(grammar)
        for token in ids:
            if not row.allows([token])[0]:
                return False
            row.accept(token)
        return finish == "length" or row.finished


@dataclass
class FakeGPT:
    routes: GPTRoutes
    client: GPTClient
    worker: ScriptedWorker
    app: FastAPI

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://tinyserve", timeout=10)


def fake_gpt(script: Script, settings: Settings | None = None, **worker: object) -> FakeGPT:
    """The GPT's routes, as the server registers them, on a real client whose worker is scripted."""
    settings = settings or Settings()
    client = GPTClient(ChannelAddress("/nonexistent"))
    routes = GPTRoutes(ServedGPT.load(settings, client))
    scripted = ScriptedWorker(script, routes.served.tok, routes.served.eot_id, **worker)  # type: ignore[arg-type]
    client._end = scripted  # type: ignore[assignment]
    app = FastAPI()
    routes.register(app)
    install_error_handlers(app)
    return FakeGPT(routes, client, scripted, app)


@functools.cache
def _grammars(tok: PreTrainedTokenizerFast) -> Grammars:
    return Grammars(tok, len(tok))  # its token table takes half a second: one for every fake


def says(text: str) -> Script:
    """A script that answers every request with `text`."""
    return lambda _: text
