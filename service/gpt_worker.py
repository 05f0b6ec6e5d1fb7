"""The GPT's LitServe worker: the engine driven by two threads of its own, behind a LitServe loop.

Path of a request: the API server (service/gpt_client.py) sends a `Submit` over the GPT channel
(service/channel.py; the messages are service/gpt_protocol.py's). In this process:

- the intake thread takes it off the channel and puts it in the engine's thread-safe inbox (a `Cancel` goes
  straight to `engine.cancel`), then wakes the engine thread;
- the engine thread runs steps back to back while there is work: `engine.prefill()` (admit waiting requests within
  the prefill budget; their first tokens), then `engine.decode()` (one token for every running sequence), and after
  each sends one message per API server: a list of `Token`s and `Failure`s; with no work it sleeps on an event.

The threads are the shape every worker shares (service/worker_threads.py). Why not LitServe's
`ContinuousBatchingLoop` (litserve 0.2.19), which this loop first subclassed: measured at 32 streams on 2 cores, the
worker used 0.71 of a core and decoded a batch-32 step every 15 ms where the same engine alone takes 8; with the
threads below and the channel, see README, Performance. The engine's matrix work releases the GIL, so the intake
thread costs the engine next to nothing.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, cast

import litserve as ls
import torch
from litserve.specs.base import LitSpec

from model.engine import AdmissionError, Engine, TokenEvent
from model.gpt import load_gpt
from service import metrics
from service.channel import ChannelAddress, WorkerEnd, broadcast
from service.gpt_protocol import Cancel, Failure, FinishReason, ServerGone, StepItem, Token, WorkerRequest
from service.litserve_adapter import GuardedAPI, worker_index
from service.settings import Settings
from service.worker_threads import IDLE_WAIT_SECONDS, Outbox, ThreadedLoop, intake

logger = logging.getLogger(__name__)


class EngineLoop(ThreadedLoop):
    """The intake and engine threads of the GPT worker."""

    def __init__(self) -> None:
        super().__init__()
        self._wake: threading.Event  # made in the worker process: a lock cannot travel to a spawned process
        # Owned by the engine thread, except that the intake thread adds entries before the engine sees the uid.
        self._routes: dict[str, int] = {}  # uid -> response queue id of the API server that sent it
        self._arrivals: dict[str, float] = {}  # uid -> arrival at the API server (monotonic: one clock on a host)
        self._last_token: dict[str, float] = {}
        self._refused: list[tuple[str, str]] = []  # (uid, why): refused at admission, answered by the engine thread
        self._dead_servers: set[int] = set()  # queue ids of API servers that died (the intake thread's)

    def pre_setup(self, lit_api: ls.LitAPI, spec: LitSpec | None = None) -> None:
        if not isinstance(lit_api, GPTAPI):
            raise TypeError("EngineLoop drives GPTAPI only")

    def threads(self, lit_api: ls.LitAPI) -> list[threading.Thread]:
        assert isinstance(lit_api, GPTAPI)
        self._wake = threading.Event()
        take = functools.partial(self._take, lit_api.engine)
        return [
            threading.Thread(target=intake, args=(lit_api.channel, take, "gpt"), name="gpt-intake", daemon=True),
            threading.Thread(target=self._generate, args=(lit_api,), name="gpt-engine", daemon=True),
        ]

    # ---- intake thread ------------------------------------------------------------------------------------------

    def _take(self, engine: Engine, item: WorkerRequest) -> None:
        if isinstance(item, Cancel):
            engine.cancel(item.uid)
            return
        if isinstance(item, ServerGone):
            self._drop_server(engine, item.queue_id)
            return
        if item.queue_id in self._dead_servers:
            return  # sent just before its API server died, read after: nobody waits for it
        self._routes[item.uid] = item.queue_id
        self._arrivals[item.uid] = item.arrival
        try:
            engine.add_request(item.uid, item.prompt_ids, item.params)
            metrics.GPT_PROMPT_TOKENS.inc(len(item.prompt_ids))
        except AdmissionError as exc:
            # The API server checks the context first, so this only guards against a mismatched model.
            logger.warning("request %s refused at admission: %s", item.uid, exc)
            self._refused.append((item.uid, str(exc)))
        self._wake.set()

    def _drop_server(self, engine: Engine, queue_id: int) -> None:
        """Cancel every request of a dead API server: its slots go to live clients at the next step."""
        self._dead_servers.add(queue_id)
        # list() copies the dict in one step: the engine thread removes finished routes meanwhile.
        uids = [uid for uid, q in list(self._routes.items()) if q == queue_id]
        for uid in uids:
            engine.cancel(uid)
        self._wake.set()
        logger.warning("API server %d is gone: cancelled its %d open requests", queue_id, len(uids))

    # ---- engine thread ------------------------------------------------------------------------------------------

    def _generate(self, api: GPTAPI) -> None:
        engine, channel = api.engine, api.channel
        outbox: Outbox[StepItem] = Outbox()
        while True:
            self._wake.clear()
            while self._refused:
                uid, why = self._refused.pop()
                self._arrivals.pop(uid, None)
                self._send_failure(outbox, Failure(uid, 400, "invalid_request", why))
            if not engine.has_work():
                outbox.flush(channel)
                self._wake.wait(timeout=IDLE_WAIT_SECONDS)  # set by the intake thread
                continue
            try:
                # First tokens go out as soon as their prefill is done, before everyone's decode step.
                for phase in (engine.prefill, engine.decode):
                    phase_start = time.monotonic()
                    events = phase()
                    self._record(events, phase_start, engine)
                    self._route(outbox, events)
                    outbox.flush(channel)
            except Exception as exc:  # a failed step must not leave half a batch behind
                logger.exception("engine step failed; resetting the engine")
                engine.reset()
                metrics.GPT_FINISHED.labels("error").inc(len(self._routes))
                why = f"the engine failed on this batch ({type(exc).__name__}); the request was dropped"
                for uid in list(self._routes):
                    self._send_failure(outbox, Failure(uid, 500, "engine_error", why))
                self._arrivals.clear()
                self._last_token.clear()
                outbox.flush(channel)

    def _route(self, outbox: Outbox[StepItem], events: list[TokenEvent]) -> None:
        # One message per API server per phase, not one per token (a decode step at batch 32 is 32 tokens).
        for ev in events:
            finished = ev.finish_reason is not None
            queue_id = self._routes.pop(ev.request_id, None) if finished else self._routes.get(ev.request_id)
            if queue_id is not None:
                finish = cast(FinishReason | None, ev.finish_reason)  # the engine's reasons are the wire's
                outbox.add(
                    queue_id,
                    Token(ev.request_id, ev.token_id, ev.logprob, ev.top_logprobs, finish, ev.prompt_logprobs),
                )

    def _send_failure(self, outbox: Outbox[StepItem], failure: Failure) -> None:
        queue_id = self._routes.pop(failure.uid, None)
        if queue_id is not None:
            outbox.add(queue_id, failure)

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


def announce_server_gone(address: ChannelAddress, queue_id: int) -> None:
    """Tell every GPT worker that API server `queue_id` died (called by the main process's supervisor)."""
    broadcast(address, ServerGone(queue_id))


class GPTAPI(GuardedAPI):
    """Hosts the engine and its end of the GPT channel; requests arrive already tokenized and validated."""

    def __init__(self, settings: Settings, spec: LitSpec, channel: ChannelAddress) -> None:
        super().__init__(
            max_batch_size=settings.gpt_max_batch_size,
            stream=True,
            loop=EngineLoop(),
            spec=spec,
        )
        self.settings = settings
        self.address = channel
        self.engine: Engine
        self.channel: WorkerEnd[WorkerRequest, StepItem]

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        model = load_gpt(self.settings.gpt_dir, device)
        self.engine = Engine(
            model,
            max_batch_size=self.settings.gpt_max_batch_size,
            max_prefill_tokens=self.settings.gpt_max_prefill_tokens,
        )
        # LitServe sets the worker's index (per API path) before setup; bound before the worker reports ready.
        self.channel = WorkerEnd(self.address, worker_index())
        logger.info("GPT engine ready on %s (%s)", device, next(model.parameters()).dtype)

    def predict(self, x: Any) -> Any:  # required by LitAPI's interface; EngineLoop drives the engine directly
        raise NotImplementedError("the GPT is driven by EngineLoop")

    def encode_response(self, output: Any) -> Any:
        return output
