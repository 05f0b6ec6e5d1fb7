"""The GPT's LitServe worker: the engine behind a continuous-batching loop.

Path of a request: the API server (service/completions.py) tokenizes and validates, then puts
`(response_queue_id, uid, arrival, payload)` on this API's request queue. `EngineLoop` takes it off (a cancel control
item goes straight to `engine.cancel`), hands it to the engine, and after every decode step sends one token event per
sequence back to the API server that took the request, which turns ids into text and streams them out.

LitServe's `ContinuousBatchingLoop` is the base; this subclass fixes what it lacks (litserve 0.2.19, measured):
an idle worker spun a core, cancel control items had no path, an exception in a step left the engine's state behind,
and the payload of the FINISH message is thrown away (so the last token travels as an ordinary message first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from queue import Queue
from typing import Any

import litserve as ls
import torch
from fastapi import HTTPException
from litserve.callbacks import CallbackRunner
from litserve.loops.continuous_batching_loop import ContinuousBatchingLoop
from litserve.specs.base import LitSpec
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType

from model.engine import AdmissionError, Engine, SamplingParams, TokenEvent
from model.gpt import load_gpt
from service import metrics
from service.settings import Settings

logger = logging.getLogger(__name__)

# Payload of a control item that cancels the request with the same uid (see CompletionsSpec).
CANCEL = {"cancel": True}
# The response-buffer key under which each API server receives a whole step's token messages at once.
FANOUT_UID = "tinyserve-gpt-step"


def token_message(ev: TokenEvent) -> dict[str, Any]:
    """What travels back to the API server for one token: small, picklable, no tensors."""
    return {"token": ev.token_id, "logprob": ev.logprob, "top": ev.top_logprobs, "finish": ev.finish_reason}


class EngineLoop(ContinuousBatchingLoop):
    def __init__(self) -> None:
        super().__init__()
        self._api: GPTAPI | None = None
        self._wake: asyncio.Event | None = None
        self._outbox: queue.SimpleQueue[Callable[[], None]] | None = None
        self._arrivals: dict[str, float] = {}  # uid -> arrival at the API server (monotonic, same clock)
        self._last_token: dict[str, float] = {}

    def pre_setup(self, lit_api: ls.LitAPI, spec: LitSpec | None = None) -> None:
        # The base checks for hooks of its default step(); this loop drives the engine itself.
        if not lit_api.stream:
            raise ValueError("EngineLoop needs a streaming LitAPI (stream=True)")

    async def schedule_task(
        self, lit_api: ls.LitAPI, lit_spec: LitSpec | None, request_queue: Queue, transport: MessageTransport
    ) -> None:
        assert isinstance(lit_api, GPTAPI)
        self._api = lit_api
        self._wake = asyncio.Event()
        # Sends go through a thread of their own: each is a round trip to LitServe's manager process, and the next
        # decode step should not wait for it (measured: at one stream the send took about as long as the step).
        # One thread keeps them in order.
        self._outbox = queue.SimpleQueue()
        threading.Thread(target=self._send_forever, args=(self._outbox,), name="gpt-sender", daemon=True).start()
        await super().schedule_task(lit_api, lit_spec, request_queue, transport)

    @staticmethod
    def _send_forever(outbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            send = outbox.get()
            try:
                send()
            except Exception:  # a failed send loses one message, never the sender
                logger.exception("sending a step's output failed")

    def _send(self, send: Callable[[], None]) -> None:
        if self._outbox is None:
            send()
        else:
            self._outbox.put(send)

    def get_request(self, request_queue: Queue, block: bool = True, timeout: float | None = None) -> Any:
        # Control items never reach `prefill`: a cancel acts on the engine at once (thread-safe there).
        while True:
            item = super().get_request(request_queue, block=block, timeout=timeout)
            if item is None:
                return None
            _, uid, arrival, payload = item
            if payload == CANCEL:
                if self._api is not None:
                    self._api.engine.cancel(uid)
                continue
            self._arrivals[uid] = arrival
            return item

    def add_request(
        self,
        uid: str,
        request: Any,
        lit_api: ls.LitAPI,
        lit_spec: LitSpec | None,
        transport: MessageTransport | None = None,
    ) -> None:
        super().add_request(uid, request, lit_api, lit_spec, transport)
        if self._wake is not None:
            self._wake.set()

    async def run(
        self,
        lit_api: ls.LitAPI,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: MessageTransport,
        workers_setup_status: dict[int, str],
        callback_runner: CallbackRunner,
    ) -> None:
        assert isinstance(lit_api, GPTAPI)
        if not lit_api.has_active_requests():
            # Sleep until a request arrives instead of spinning a core (the base loop returns at once).
            if self._wake is not None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            else:
                await asyncio.sleep(0.01)
            return
        while lit_api.refused:
            uid, message = lit_api.refused.pop()
            queue_id = self.response_queue_ids.get(uid)
            if queue_id is not None:
                self._send(
                    partial(
                        self.put_error_response,
                        transport, queue_id, uid, HTTPException(400, message), LoopResponseType.STREAMING,
                    )
                )  # fmt: skip
                self.mark_completed(uid)
        if not lit_api.engine.has_work():
            return
        step_start = time.monotonic()
        try:
            events = await asyncio.to_thread(lit_api.engine.step)
        except Exception as exc:  # a failed step must not leave half a batch behind
            logger.exception("engine step failed; resetting the engine")
            lit_api.engine.reset()
            metrics.GPT_FINISHED.labels("error").inc(len(self.response_queue_ids))
            for uid, queue_id in self.response_queue_ids.items():
                self._send(partial(self.put_error_response, transport, queue_id, uid, exc, LoopResponseType.STREAMING))
            self.response_queue_ids.clear()
            self.active_sequences.clear()
            self._arrivals.clear()
            self._last_token.clear()
            return
        self._record(events, step_start, lit_api.engine)
        # One message per API server per step, not one per token: each send is a round trip through LitServe's
        # manager queue, which at batch 32 cost more than the decode step itself.
        outbox: dict[int, list[tuple[str, Any, LitAPIStatus]]] = {}
        for ev in events:
            queue_id = self.response_queue_ids.get(ev.request_id)
            if queue_id is None:
                continue
            box = outbox.setdefault(queue_id, [])
            box.append((ev.request_id, token_message(ev), LitAPIStatus.OK))
            if ev.finish_reason is not None:
                box.append((ev.request_id, "", LitAPIStatus.FINISH_STREAMING))
                self.mark_completed(ev.request_id)
        for queue_id, box in outbox.items():
            self._send(
                partial(
                    self.put_response, transport, queue_id, FANOUT_UID, box, LitAPIStatus.OK, LoopResponseType.STREAMING
                )
            )

    def _record(self, events: list[TokenEvent], step_start: float, engine: Engine) -> None:
        """Metrics of one step, aggregated here so each step costs a handful of metric updates."""
        now = time.monotonic()
        tokens = 0
        for ev in events:
            arrival = self._arrivals.get(ev.request_id, step_start)
            if ev.token_id is not None:
                tokens += 1
                last = self._last_token.get(ev.request_id)
                if last is None:
                    metrics.GPT_QUEUE_TIME.observe(max(0.0, step_start - arrival))
                    metrics.GPT_TTFT.observe(now - arrival)
                else:
                    metrics.GPT_ITL.observe(now - last)
                self._last_token[ev.request_id] = now
            if ev.finish_reason is not None:
                metrics.GPT_FINISHED.labels(ev.finish_reason).inc()
                metrics.GPT_E2E.observe(now - arrival)
                self._arrivals.pop(ev.request_id, None)
                self._last_token.pop(ev.request_id, None)
        if tokens:
            metrics.GPT_GENERATION_TOKENS.inc(tokens)
            metrics.GPT_DECODE_BATCH_SIZE.observe(tokens)
        metrics.GPT_RUNNING.set(engine.num_active)
        metrics.GPT_WAITING.set(engine.num_waiting)


class GPTAPI(ls.LitAPI):
    """Hosts the engine; requests arrive as plain dicts already tokenized and validated by the API server."""

    def __init__(self, settings: Settings, spec: LitSpec) -> None:
        super().__init__(
            max_batch_size=settings.gpt_max_batch_size,
            stream=True,
            loop=EngineLoop(),
            spec=spec,
        )
        self.settings = settings
        self.engine: Engine
        self.refused: list[tuple[str, str]] = []  # (uid, why) refused at admission, answered by the loop

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        model = load_gpt(self.settings.gpt_dir, device)
        self.engine = Engine(model, max_batch_size=self.settings.gpt_max_batch_size)
        logger.info("GPT engine ready on %s (%s)", device, next(model.parameters()).dtype)

    # Called by the loop on the event-loop thread; the engine takes it through its thread-safe inbox.
    def add_request(self, uid: str, request: dict[str, Any]) -> None:
        try:
            self.engine.add_request(uid, request["prompt_ids"], SamplingParams(**request["params"]))
            metrics.GPT_PROMPT_TOKENS.inc(len(request["prompt_ids"]))
        except AdmissionError as exc:
            # The API server checks the same bounds first, so this only guards against a mismatched model.
            logger.warning("request %s refused at admission: %s", uid, exc)
            self.refused.append((uid, str(exc)))

    def has_capacity(self) -> bool:
        return self.engine.num_active + self.engine.num_waiting < self.settings.gpt_max_batch_size

    def has_active_requests(self) -> bool:
        return self.engine.has_work() or bool(self.refused)

    def predict(self, x: Any) -> Any:  # required by LitAPI's interface; the loop calls the engine directly
        raise NotImplementedError("the GPT is driven by EngineLoop")

    def encode_response(self, output: Any) -> Any:
        return output


def sampling_payload(prompt_ids: list[int], params: SamplingParams) -> dict[str, Any]:
    """The request-queue payload: plain data, cheap to pickle across processes."""
    return {"prompt_ids": prompt_ids, "params": asdict(params)}
