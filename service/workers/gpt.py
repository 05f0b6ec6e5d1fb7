"""The GPT worker process: the engine, fed by an intake thread and stepped by an engine thread (one loop, numbered).

1) the intake thread takes `Submit`/`Cancel`/`ServerGone` off the channel into the engine's thread-safe inbox,
   compiling a request's grammar there (cached), off the decode thread;
2) the engine thread, while there is work, runs `engine.prefill()` then `engine.decode()` and after each sends one
   message per API server (a list of `Token`s and `Failure`s); idle, it sleeps on an event the intake sets.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

import torch

from model.engine import AdmissionError, Engine, TokenEvent
from model.gpt import load_gpt, load_tokenizer
from model.grammar import GrammarError, Grammars
from service import metrics
from service.runtime.litserve_adapter import ModelWorker, worker_index
from service.settings import Settings
from service.transport.channel import ChannelAddress, WorkerEnd
from service.transport.messages import Cancel, Failure, FinishReason, GPTReply, GPTRequest, ServerGone, Token
from service.workers.threads import IDLE_WAIT_SECONDS, Outbox, intake

logger = logging.getLogger(__name__)


class EngineLoop:
    """The intake and engine threads of the GPT worker, and what they share about open requests."""

    def __init__(self, engine: Engine, channel: WorkerEnd[GPTRequest, GPTReply], grammars: Grammars) -> None:
        self.engine = engine
        self.channel = channel
        self.grammars = grammars
        self._wake = threading.Event()
        # Owned by the engine thread, except that the intake thread adds entries before the engine sees the uid.
        self._routes: dict[str, int] = {}  # uid -> index of the API server that sent it
        self._arrivals: dict[str, float] = {}  # uid -> arrival at the API server (monotonic: one clock on a host)
        self._last_token: dict[str, float] = {}
        self._refused: list[tuple[str, str]] = []  # (uid, why): refused at admission, answered by the engine thread
        self._dead_servers: set[int] = set()  # indices of API servers that died (the intake thread's)
        self._prefix_seen = (0, 0)  # the engine's prefix-cache (queries, hits) already counted

    def threads(self) -> list[threading.Thread]:
        return [
            threading.Thread(target=intake, args=(self.channel, self._take, "gpt"), name="gpt-intake", daemon=True),
            threading.Thread(target=self._generate, name="gpt-engine", daemon=True),
        ]

    # ---- intake thread ------------------------------------------------------------------------------------------

    def _take(self, item: GPTRequest) -> None:
        engine = self.engine
        if isinstance(item, Cancel):
            engine.cancel(item.uid)
            return
        if isinstance(item, ServerGone):
            self._drop_server(engine, item.server_index)
            return
        if item.server_index in self._dead_servers:
            return  # sent just before its API server died, read after: nobody waits for it
        self._routes[item.uid] = item.server_index
        self._arrivals[item.uid] = item.arrival
        try:
            constraint = None if item.grammar is None else self.grammars.row(item.grammar)
            engine.add_request(item.uid, item.prompt_ids, item.params, constraint)
            metrics.get().gpt_prompt_tokens.inc(len(item.prompt_ids))
        except (AdmissionError, GrammarError) as exc:
            # The API server checks the context first, so this only guards against a mismatched model.
            logger.warning("request %s refused at admission: %s", item.uid, exc)
            self._refused.append((item.uid, str(exc)))
        self._wake.set()

    def _drop_server(self, engine: Engine, server_index: int) -> None:
        """Cancel every request of a dead API server: its slots go to live clients at the next step."""
        self._dead_servers.add(server_index)
        # list() copies the dict in one step: the engine thread removes finished routes meanwhile.
        uids = [uid for uid, q in list(self._routes.items()) if q == server_index]
        for uid in uids:
            engine.cancel(uid)
        self._wake.set()
        logger.warning("API server %d is gone: cancelled its %d open requests", server_index, len(uids))

    # ---- engine thread ------------------------------------------------------------------------------------------

    def _generate(self) -> None:
        engine, channel = self.engine, self.channel
        outbox: Outbox[GPTReply] = Outbox()
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
                metrics.get().gpt_finished.labels("error").inc(len(self._routes))
                why = f"the engine failed on this batch ({type(exc).__name__}); the request was dropped"
                for uid in list(self._routes):
                    self._send_failure(outbox, Failure(uid, 500, "engine_error", why))
                self._arrivals.clear()
                self._last_token.clear()
                outbox.flush(channel)

    def _route(self, outbox: Outbox[GPTReply], events: list[TokenEvent]) -> None:
        # One message per API server per phase, not one per token (a decode step at batch 32 is 32 tokens).
        for ev in events:
            finished = ev.finish_reason is not None
            server_index = self._routes.pop(ev.request_id, None) if finished else self._routes.get(ev.request_id)
            if server_index is not None:
                finish = cast(FinishReason | None, ev.finish_reason)  # the engine's reasons are the wire's
                outbox.add(
                    server_index,
                    Token(ev.request_id, ev.token_id, ev.logprob, ev.top_logprobs, finish, ev.prompt_logprobs),
                )

    def _send_failure(self, outbox: Outbox[GPTReply], failure: Failure) -> None:
        server_index = self._routes.pop(failure.uid, None)
        if server_index is not None:
            outbox.add(server_index, failure)

    def _record(self, events: list[TokenEvent], step_start: float, engine: Engine) -> None:
        """Metrics of one step, aggregated here so each step costs a handful of metric updates."""
        m = metrics.get()
        now = time.monotonic()
        tokens = 0
        for ev in events:
            arrival = self._arrivals.get(ev.request_id, step_start)
            if ev.token_id is not None:
                tokens += 1
                last = self._last_token.get(ev.request_id)
                if last is None:
                    m.gpt_queue_time.observe(max(0.0, step_start - arrival))
                    m.gpt_ttft.observe(now - arrival)
                else:
                    m.gpt_itl.observe(now - last)
                self._last_token[ev.request_id] = now
            if ev.finish_reason is not None:
                m.gpt_finished.labels(ev.finish_reason).inc()
                m.gpt_e2e.observe(now - arrival)
                self._arrivals.pop(ev.request_id, None)
                self._last_token.pop(ev.request_id, None)
        if tokens:
            m.gpt_generation_tokens.inc(tokens)
            m.gpt_decode_batch_size.observe(tokens)
        m.gpt_running.set(engine.num_active)
        m.gpt_waiting.set(engine.num_waiting)
        m.gpt_kv_cache_usage.set(engine.kv_cache_usage)
        queries, hits = engine.prefix_queries, engine.prefix_hits
        if queries != self._prefix_seen[0]:  # the engine counts since it started; the counters take the increase
            m.gpt_prefix_cache_queries.inc(queries - self._prefix_seen[0])
            m.gpt_prefix_cache_hits.inc(hits - self._prefix_seen[1])
            self._prefix_seen = (queries, hits)


class GPTWorker(ModelWorker):
    """Hosts the engine and its end of the GPT channel; requests arrive already tokenized and validated."""

    def __init__(self, settings: Settings, channel: ChannelAddress) -> None:
        super().__init__(api_path="/v1/completions", max_batch_size=settings.gpt_max_batch_size)
        self.settings = settings
        self.address = channel
        self.engine: Engine
        self.engine_loop: EngineLoop  # made in setup, in the worker process

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        model = load_gpt(self.settings.gpt_dir, device)
        self.engine = Engine(
            model,
            max_batch_size=self.settings.gpt_max_batch_size,
            max_prefill_tokens=self.settings.gpt_max_prefill_tokens,
            prefix_cache_rows=self.settings.gpt_prefix_cache_rows,
        )
        # LitServe sets the worker's index (per API path) before setup; bound before the worker reports ready.
        grammars = Grammars(load_tokenizer(self.settings.gpt_dir), self.engine.vocab_size)
        self.engine_loop = EngineLoop(self.engine, WorkerEnd(self.address, worker_index()), grammars)
        logger.info("GPT engine ready on %s (%s)", device, next(model.parameters()).dtype)

    def threads(self) -> list[threading.Thread]:
        return self.engine_loop.threads()
