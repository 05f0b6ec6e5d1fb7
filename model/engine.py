"""Continuous-batching decoder for the GPT-2 model: token ids in, token ids out; no HTTP, no text.

`step()` is `prefill()` then `decode()`, over a KV cache of its own (one preallocated row per sequence); why, with
the figures: docs/architecture-engine.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model.gpt2_forward import Attend, CachedForward, cached_forward
from model.logits import Controls, TokenCounts
from model.prefix_cache import PrefixCache
from model.request_queue import RequestQueue
from model.sampling import Constraint, PromptLogprob, SamplingParams, SamplingPlan, admission_error, prompt_logprobs

__all__ = ["AdmissionError", "Engine", "PromptLogprob", "SamplingParams", "TokenEvent"]


@dataclass
class TokenEvent:
    request_id: str
    token_id: int | None  # None only for a finish-only event (cancelled)
    logprob: float | None  # chosen token's log-probability under the raw logits, when logprobs were asked for
    top_logprobs: list[tuple[int, float]] | None  # top-N (token_id, logprob), descending
    finish_reason: str | None  # None while running; "stop" (a stop token, a complete grammar), "length", "cancelled"
    # On a request's first event when it asked for prompt_logprobs: one entry per prompt token but the first.
    prompt_logprobs: list[PromptLogprob] | None = None


class AdmissionError(ValueError):
    """The request cannot be served as asked; raised by `Engine.add_request` before anything is queued."""


@dataclass
class _Seq:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None  # own generator when seeded, so its draws do not depend on the batch
    constraint: Constraint | None = None  # its grammar, when its output is constrained
    length: int = 0  # tokens whose keys and values are in the cache
    generated: int = 0
    last_token: int = 0
    output: list[int] = field(default_factory=list)  # tokens generated so far
    hit: tuple[int, int] = (-1, 0)  # (prefix cache row, prompt tokens found there) when it was admitted


@dataclass
class _Batch:
    """Device-side state of the active rows between membership changes."""

    tokens: torch.Tensor  # [B, 1] next input token of each row
    positions: torch.Tensor  # [B, 1] its position
    uniform: bool  # all rows at the same position (stays so, as all advance together): no mask, slice writes
    plan: SamplingPlan


class Engine:
    def __init__(
        self,
        model: torch.nn.Module,
        max_batch_size: int = 32,
        max_prefill_tokens: int | None = None,
        prefix_cache_rows: int = 0,
    ) -> None:
        """`model`: a Hugging Face causal LM with a cached forward in model/ (GPT-2 today).
        `max_prefill_tokens`: padded prompt tokens one `prefill()` may run (at least one request always joins);
        None admits every waiting request that has a free slot. `prefix_cache_rows`: sequences whose keys and values
        are kept for later prompts that begin with their tokens (model/prefix_cache.py); 0 turns it off."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._net: CachedForward = cached_forward(model)
        self._device, self._dtype = self._net.device, self._net.dtype
        self._ctx = self._net.context
        self._vocab = self._net.vocab
        self._max_batch = max_batch_size
        if max_prefill_tokens is not None and max_prefill_tokens < 1:
            raise ValueError("max_prefill_tokens must be at least 1")
        self._prefill_budget = max_prefill_tokens
        with torch.inference_mode():
            # [layer, key/value, slot, head, position, head_dim], for the full context: nothing grows.
            net = self._net
            shape = (net.n_layer, 2, max_batch_size, net.n_head, self._ctx, net.head_dim)
            self._kv = torch.zeros(shape, dtype=self._dtype, device=self._device)
            self._layer_kv = list(self._kv.unbind(0))  # views made once, not on every step
            self._arange = torch.arange(max(self._ctx, max_batch_size), device=self._device)
            self._counts = TokenCounts(max_batch_size, self._vocab, self._device)
            cache_shape = (net.n_layer, net.n_head, self._ctx, net.head_dim)
            self._prefix = PrefixCache(prefix_cache_rows, cache_shape, self._dtype, self._device)
        # Prompt tokens looked up in the prefix cache, and those found there (vLLM's prefix_cache_queries and hits).
        self.prefix_queries = 0
        self.prefix_hits = 0
        self._rng = torch.Generator(device=self._device)
        self._rng.seed()  # unseeded requests must differ from one server start to the next
        self._queue: RequestQueue[_Seq] = RequestQueue()
        self._scales = [net.attention_scale(i) for i in range(net.n_layer)]
        self._heads = (net.n_head, net.head_dim)
        self._rows: list[_Seq] = []  # row i of the cache; only step() and reset() touch it
        self._batch: _Batch | None = None

    @property
    def context_length(self) -> int:
        return self._ctx

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def num_active(self) -> int:
        return len(self._rows)

    @property
    def num_waiting(self) -> int:
        return len(self._queue)

    @property
    def kv_cache_usage(self) -> float:
        """The fraction of the running sequences' cache rows in use (prefix-cache rows can be evicted: free)."""
        return len(self._rows) / self._max_batch

    def has_work(self) -> bool:
        return bool(self._rows or self._queue or self._queue.has_cancels)

    def has_capacity(self) -> bool:
        """Whether a request added now would join at the next step rather than wait."""
        return self.num_active + self.num_waiting < self._max_batch

    def add_request(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, constraint: Constraint | None = None
    ) -> None:
        """Queue a request; `constraint`, a grammar compiled by the caller, masks what it forbids at every step."""
        why = admission_error(prompt_ids, params, self._ctx, self._vocab)
        if why is not None:
            raise AdmissionError(why)
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator(device=self._device)
            generator.manual_seed(params.seed)
        seq = _Seq(request_id, list(prompt_ids), params, generator, constraint)
        if not self._queue.add(seq):
            raise AdmissionError(f"request id {request_id!r} is already in use")

    def cancel(self, request_id: str) -> None:
        self._queue.cancel(request_id)

    def reset(self) -> list[str]:
        """Drop every request (after an exception left the state unknown); return the ids dropped.

        Call it from the thread that runs step(), never during one.
        """
        dropped = [s.request_id for s in self._rows] + self._queue.clear()
        self._rows = []
        self._batch = None
        self._prefix.clear()  # an entry may have been half written when the step failed
        return dropped

    def step(self) -> list[TokenEvent]:
        """One scheduling iteration: `prefill()` then `decode()`."""
        return self.prefill() + self.decode()

    @torch.inference_mode()
    def prefill(self) -> list[TokenEvent]:
        """Apply cancels, admit waiting requests (free slots, prefill budget) and return their first tokens."""
        cancels, cancelled = self._queue.take_cancels()
        dead = {i for i, s in enumerate(self._rows) if s.request_id in cancels}
        # Only requests still here: one that finished since cancel() was called already had its last event.
        cancelled += [self._rows[i].request_id for i in sorted(dead)]
        events = [TokenEvent(rid, None, None, None, "cancelled") for rid in cancelled]
        if cancelled:
            self._remove(dead, set(cancelled))
        joining = self._queue.admit(self._max_batch - len(self._rows), self._prefill_budget, self._to_prefill)
        if joining:
            events += self._prefill(joining)
        return events

    @torch.inference_mode()
    def decode(self) -> list[TokenEvent]:
        """One token for every active sequence (none when nothing runs)."""
        return self._decode() if self._rows else []

    def _to_prefill(self, seq: _Seq) -> int:
        """The prompt tokens `seq` would prefill: those after the prefix the prefix cache holds of it."""
        # A scored prompt is prefilled whole: its logprobs need every position's logits.
        if self._prefix.rows and seq.params.prompt_logprobs is None:
            row, n = self._prefix.match(seq.prompt)
            seq.hit = (row, min(n, len(seq.prompt) - 1))  # at least one token to prefill, for its logits
        return len(seq.prompt) - seq.hit[1]

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        attend: Attend,
        last: torch.Tensor | None = None,
        every: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's logits at each row's last (or `last`) position, and at every position of the rows `every`;
        a method so benchmarks can time it."""
        return self._net(ids, positions, attend, last, every)

    def _prefill(self, seqs: list[_Seq]) -> list[TokenEvent]:
        """All joining prompts in one right-padded forward; each writes its keys and values into a new row, after
        the prefix the prefix cache held of it (copied in first: only the rest of the prompt runs)."""
        r0, n = len(self._rows), len(seqs)
        starts = [s.hit[1] for s in seqs]
        for j, s in enumerate(seqs):
            if s.hit[1]:
                self._prefix.load(s.hit[0], s.hit[1], self._kv[:, :, r0 + j])
        lengths = [len(s.prompt) - c for s, c in zip(seqs, starts, strict=True)]
        width = max(lengths)
        padded = [s.prompt[c:] + [0] * (width - m) for s, c, m in zip(seqs, starts, lengths, strict=True)]
        ids = torch.tensor(padded, device=self._device)
        last = torch.tensor(lengths, device=self._device) - 1
        heads, dim = self._heads
        positions = self._arange[:width].unsqueeze(0)
        if any(starts):  # each row's tokens at its own positions, attending to its cached prefix too
            at = torch.tensor(starts, device=self._device).unsqueeze(1) + positions  # [n, width]
            span = max(c + m for c, m in zip(starts, lengths, strict=True))
            mask = (self._arange[:span] <= at.unsqueeze(2)).unsqueeze(1)  # [n, 1, width, span]
            rows = self._arange[r0 : r0 + n].unsqueeze(1)
            # Padding may run past the context: its writes go to the last position, which no query reads before
            # decoding overwrites it.
            positions = at.clamp(max=self._ctx - 1)

        def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = qkv.view(n, width, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)  # [n, heads, width, dim]
            kv = self._layer_kv[i]
            # Padding past a prompt's end is written too; decoding overwrites it before any query can see it.
            if not any(starts):
                kv[0, r0 : r0 + n, :, :width] = k
                kv[1, r0 : r0 + n, :, :width] = v
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self._scales[i])
            else:  # the two index tensors put the batch first: [n, width, key/value, head, dim]
                kv[:, rows, :, positions] = qkv[:, :, heads * dim :].view(n, width, 2, heads, dim)
                keys, values = kv[:, r0 : r0 + n, :, :span].unbind(0)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self._scales[i])
            return y.transpose(1, 2).reshape(n * width, heads * dim)

        scored = [j for j, s in enumerate(seqs) if s.params.prompt_logprobs is not None]
        every = torch.tensor(scored, device=self._device) if scored else None
        logits, full = self._forward(ids, positions, attend, last, every)
        for j, s in enumerate(seqs):
            s.length = len(s.prompt)
            if self._prefix.rows:
                self._prefix.store(s.prompt, self._kv[:, :, r0 + j])  # found by the prompts that follow it
                self.prefix_queries += len(s.prompt) if s.params.prompt_logprobs is None else 0
                self.prefix_hits += s.hit[1]
            if s.params.uses_controls:
                self._counts.start(r0 + j, s.prompt)
        self._rows.extend(seqs)
        self._batch = None
        prompt_lps = {}
        if every is not None and full is not None:
            asks = [(len(seqs[j].prompt), seqs[j].params.prompt_logprobs or 0) for j in scored]
            scores = prompt_logprobs(full, ids.index_select(0, every), asks)
            prompt_lps = dict(zip(scored, scores, strict=True))
        return self._sample_and_record(logits, self._plan(seqs, r0), r0, prompt_lps=prompt_lps)

    def _decode(self) -> list[TokenEvent]:
        batch = self._batch or self._build_batch()
        b = len(self._rows)
        rows = self._arange[:b]
        first = self._rows[0].length
        span = max(s.length for s in self._rows) + 1
        # Rows shorter than the longest mask out the stale tail of their slot.
        mask = None if batch.uniform else (self._arange[:span] <= batch.positions).view(b, 1, 1, span)

        heads, dim = self._heads
        width = heads * dim
        at = batch.positions[:, 0]

        def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
            qkv = qkv.view(b, 3 * width)
            kv = self._layer_kv[i]  # [key/value, slot, head, position, dim]
            if batch.uniform:
                kv[:, :b, :, first] = qkv[:, width:].view(b, 2, heads, dim).transpose(0, 1)
            else:  # the two index tensors put the batch first: [b, key/value, head, dim]
                kv[:, rows, :, at] = qkv[:, width:].view(b, 2, heads, dim)
            keys, values = kv[:, :b, :, :span].unbind(0)
            q = qkv[:, :width].view(b, heads, 1, dim)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self._scales[i])
            return y.reshape(b, width)

        logits, _ = self._forward(batch.tokens, batch.positions, attend)
        for s in self._rows:
            s.length += 1
        batch.positions += 1
        events = self._sample_and_record(logits, batch.plan, 0, batch)
        return events

    def _build_batch(self) -> _Batch:
        seqs = self._rows
        tokens = torch.tensor([[s.last_token] for s in seqs], device=self._device)
        positions = torch.tensor([[s.length] for s in seqs], device=self._device)
        uniform = len({s.length for s in seqs}) == 1
        self._batch = _Batch(tokens, positions, uniform, self._plan(seqs, 0))
        return self._batch

    def _plan(self, seqs: list[_Seq], row0: int) -> SamplingPlan:
        """How to draw the next token of `seqs`, which sit in cache rows `row0..`."""
        controls = Controls.of([(s.params, s.generated) for s in seqs], row0, self._counts, self._device)
        constraints = [s.constraint for s in seqs]
        return SamplingPlan([(s.params, s.generator) for s in seqs], self._vocab, self._device, controls, constraints)

    def _sample(
        self, logits: torch.Tensor, plan: SamplingPlan
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        logits = logits.float()  # sampling and logprobs in float32 whatever the model's dtype
        tokens = plan.sample(logits, self._rng)
        return tokens, plan.logprobs(logits, tokens)

    def _sample_and_record(
        self,
        logits: torch.Tensor,
        plan: SamplingPlan,
        row0: int,
        batch: _Batch | None = None,
        prompt_lps: dict[int, list[PromptLogprob]] | None = None,
    ) -> list[TokenEvent]:
        """Sample rows `row0..` of the cache, emit their events, remove the finished ones.

        `prompt_lps` (prefill only): the prompt logprobs of the plan rows that asked, sent with their first event."""
        tokens, logprobs = self._sample(logits, plan)
        token_list: list[int] = tokens.tolist()  # the step's one host sync
        if batch is not None:
            batch.tokens = tokens.unsqueeze(1)  # next step's input, already on the device
        chosen: list[float] = []
        top: list[list[float]] = []
        top_ids: list[list[int]] = []
        if logprobs is not None:  # computed before the sync above: these copies find the device idle
            chosen, top, top_ids = (t.tolist() for t in logprobs)
        lp_at = {row: j for j, row in enumerate(plan.logprob_rows)}
        events: list[TokenEvent] = []
        done: set[int] = set()
        for i, token in enumerate(token_list):
            s = self._rows[row0 + i]
            prompt_lp = prompt_lps.get(i) if prompt_lps else None
            if s.params.max_tokens == 0:  # scored only: the drawn token is not the request's
                events.append(TokenEvent(s.request_id, None, None, None, "length", prompt_lp))
                done.add(row0 + i)
                continue
            s.generated += 1
            s.last_token = token
            s.output.append(token)
            finish = None
            if s.constraint is not None:
                s.constraint.accept(token)
            if token in s.params.stop_token_ids or (s.constraint is not None and s.constraint.finished):
                finish = "stop"
            elif s.generated >= s.params.max_tokens:
                finish = "length"
            logprob, alternatives = None, None
            if (j := lp_at.get(i)) is not None:
                n = s.params.logprobs or 0
                logprob, alternatives = chosen[j], list(zip(top_ids[j][:n], top[j][:n], strict=True))
            events.append(TokenEvent(s.request_id, token, logprob, alternatives, finish, prompt_lp))
            if finish is not None:
                done.add(row0 + i)
        if done:
            self._remove(done, {self._rows[i].request_id for i in done})
        return events

    def _remove(self, dead: set[int], ids: set[str]) -> None:
        """Free the rows `dead`: the last live rows move into the holes so rows 0..B-1 stay contiguous."""
        self._queue.finished(ids)
        if not dead:
            return
        for i in dead if self._prefix.rows else ():  # kept before another row moves in
            s = self._rows[i]  # the tokens whose keys and values the row holds: the last one drawn has none yet
            self._prefix.store(s.prompt + s.output[: s.length - len(s.prompt)], self._kv[:, :, i])
        keep = len(self._rows) - len(dead)
        holes = sorted(i for i in dead if i < keep)
        movers = [i for i in range(keep, len(self._rows)) if i not in dead]
        if movers:
            span = max(self._rows[i].length for i in movers)  # only what the movers have written
            src = torch.tensor(movers, device=self._device)
            dst = torch.tensor(holes, device=self._device)
            self._kv[:, :, dst, :, :span] = self._kv[:, :, src, :, :span]
            if any(self._rows[i].params.uses_controls for i in movers):
                self._counts.move(src, dst)
            for h, m in zip(holes, movers, strict=True):
                self._rows[h] = self._rows[m]
        del self._rows[keep:]
        self._batch = None
