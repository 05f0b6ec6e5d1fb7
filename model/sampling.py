"""Per-request sampling over a batch of logits: greedy, temperature, top-k, top-p, min-p, seeds and logprobs.

A plan is built once for a fixed set of rows (when a request joins or leaves the batch), so that a decode step
copies nothing to the device and syncs nothing: the engine's one `.tolist()` a step brings the tokens out. The
controls that change the logits first (penalties, logit bias, min_tokens) are model/logits.py's; a constrained row's
grammar then masks the tokens it forbids (its `Constraint`, model/grammar.py's `GrammarRow`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:  # model/logits.py imports SamplingParams from here
    from model.logits import Controls

# Alternatives per token the server reports (OpenAI's bound for completions); the API schemas use this one too.
MAX_LOGPROBS = 5
MAX_LOGIT_BIAS = 300  # entries a request may bias (OpenAI's limit)
# Below this a temperature counts as greedy: dividing the logits by it would overflow (vLLM's rule too).
MIN_TEMPERATURE = 1e-5
# One prompt token after the first: its logprob given the tokens before it, and the top-N (token_id, logprob).
PromptLogprob = tuple[float, list[tuple[int, float]]]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None  # same seed -> same tokens whoever else shares the batch
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None = off; N in 0..MAX_LOGPROBS: chosen token's logprob + top-N alternatives a step
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (after temperature)
    # model/logits.py applies these, before temperature; see there for their semantics.
    frequency_penalty: float = 0.0  # -2..2, times the token's count in the output
    presence_penalty: float = 0.0  # -2..2, once a token is in the output
    repetition_penalty: float = 1.0  # (0, 2]: over prompt and output tokens, 1 = off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in -100..100) pairs
    min_tokens: int = 0  # stop ids cannot end the sequence before this many tokens
    # None = off; N in 0..MAX_LOGPROBS: each prompt token's logprob (but the first's) + top-N, from the prefill.
    # With it, max_tokens may be 0: the prompt is scored and nothing generated.
    prompt_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    @property
    def uses_controls(self) -> bool:
        """Whether model/logits.py has anything to do for this request."""
        return self.uses_controls_at(0)

    def uses_controls_at(self, generated: int) -> bool:
        """Whether model/logits.py has anything to do for this request once it has generated `generated` tokens:
        a met min_tokens costs nothing more (chat asks min_tokens 1 of every reply)."""
        return bool(
            self.frequency_penalty
            or self.presence_penalty
            or self.repetition_penalty != 1
            or self.logit_bias
            or (generated < self.min_tokens and self.stop_token_ids)
        )


class Constraint(Protocol):
    """A row's grammar, as the engine sees it: the tokens allowed next, and each token chosen."""

    def fill_bitmask(self, words: torch.Tensor) -> None:
        """Write the allowed tokens into `words` (int32, CPU, contiguous): bit t % 32 of word t // 32."""

    def accept(self, token: int) -> None: ...

    @property
    def finished(self) -> bool:
        """Whether the grammar is complete and takes no more tokens."""


@dataclass
class _Group:
    """Sampled rows drawn alike: within a top-`k` slice when `k` > 0, else over the whole vocabulary."""

    rows: torch.Tensor
    temperature: torch.Tensor  # [n, 1]
    k: int
    top_k: torch.Tensor | None  # [n, 1] each row's own k inside the slice; None when all equal `k`
    top_p: torch.Tensor | None  # [n, 1]; None when every row keeps 1.0
    log_min_p: torch.Tensor | None  # [n, 1] log(min_p), -inf for rows without; None when no row has one
    generators: list[torch.Generator | None]
    shared: bool  # no row has its own generator: one draw for the whole group


class SamplingPlan:
    """How to draw one token for each row of a fixed set; `rows[i]` = (params, own generator or None)."""

    def __init__(
        self,
        rows: Sequence[tuple[SamplingParams, torch.Generator | None]],
        vocab: int,
        device: torch.device,
        controls: Controls | None = None,
        constraints: Sequence[Constraint | None] = (),
    ) -> None:
        self._device = device
        self.controls = controls
        # Only constrained rows pay for a mask: the plan holds them apart, with a bitmask of their own.
        self.constrained = [(i, c) for i, c in enumerate(constraints) if c is not None]
        if self.constrained:
            self._vocab = vocab
            self._constrained_rows = self._tensor([i for i, _ in self.constrained])
            self._bitmask = torch.zeros(len(self.constrained), (vocab + 31) // 32, dtype=torch.int32)
        self.groups: list[_Group] = []
        sampled = [(i, p) for i, (p, _) in enumerate(rows) if not p.greedy]
        # Top-k/top-p rows sample inside a top-k slice: masking the whole vocabulary doubled a batch-64 step.
        sliced = [(i, p) for i, p in sampled if p.top_k > 0 or p.top_p < 1]
        full = [(i, p) for i, p in sampled if not (p.top_k > 0 or p.top_p < 1)]
        for members, is_sliced in ((sliced, True), (full, False)):
            if not members:
                continue
            ks = [min(p.top_k, vocab) if p.top_k > 0 else vocab for _, p in members]
            k = max(ks) if is_sliced else 0
            gens = [rows[i][1] for i, _ in members]
            group = _Group(
                rows=self._tensor([i for i, _ in members]),
                temperature=self._tensor([p.temperature for _, p in members]).unsqueeze(1),
                k=k,
                top_k=self._tensor(ks).unsqueeze(1) if is_sliced and min(ks) < k else None,
                top_p=None,
                log_min_p=None,
                generators=gens,
                shared=all(g is None for g in gens),
            )
            if any(p.top_p < 1 for _, p in members):
                group.top_p = self._tensor([p.top_p for _, p in members]).unsqueeze(1)
            if any(p.min_p > 0 for _, p in members):
                log_min_p = [math.log(p.min_p) if p.min_p > 0 else -math.inf for _, p in members]
                group.log_min_p = self._tensor(log_min_p).unsqueeze(1)
            self.groups.append(group)
        self.logprob_rows = [i for i, (p, _) in enumerate(rows) if p.logprobs is not None]
        self._logprob_index = self._tensor(self.logprob_rows) if self.logprob_rows else None
        self._logprob_top = max((rows[i][0].logprobs or 0 for i in self.logprob_rows), default=0)
        self._rank = torch.arange(max((g.k for g in self.groups), default=0), device=device)

    def _tensor(self, values: list[int] | list[float]) -> torch.Tensor:
        return torch.tensor(values, device=self._device)

    def sample(self, logits: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """One token id per row of float32 `logits` [rows, vocab]; `rng` serves rows without their own."""
        if self.controls is not None:
            logits = self.controls.apply(logits)
        if self.constrained:
            logits = self._mask(logits)
        tokens = logits.argmax(-1)  # greedy rows; sampled rows are overwritten below
        for g in self.groups:
            probs, slice_ids = self._probs(g, logits)
            if g.shared:
                u = torch.rand(len(g.generators), generator=rng, device=self._device)
            else:  # a seeded row draws from its own generator only: its tokens ignore its neighbours
                u = torch.cat([torch.rand(1, generator=gen or rng, device=self._device) for gen in g.generators])
            # Inverse CDF, one uniform a row, in float64 so that u * total stays below the total: the chosen
            # index is the first whose cumulative mass exceeds u * total, a token of nonzero probability.
            cdf = probs.double().cumsum(-1)
            choice = (cdf <= u.double().unsqueeze(1) * cdf[:, -1:]).sum(-1)
            chosen = choice if slice_ids is None else slice_ids.gather(1, choice.unsqueeze(1)).squeeze(1)
            tokens.index_copy_(0, g.rows, chosen)
        if self.controls is not None:
            self.controls.record(tokens)
        return tokens

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with -inf at every token a constrained row's grammar forbids now."""
        for j, (_, constraint) in enumerate(self.constrained):
            constraint.fill_bitmask(self._bitmask[j])
        # Unpacked by numpy, on this thread: torch's ops here measured twice as slow beside the grammar's calls.
        words = self._bitmask.numpy().view(np.uint8)  # little-endian int32: bit t % 8 of byte t // 8
        allowed = np.unpackbits(words, axis=1, bitorder="little")[:, : self._vocab]
        forbidden = torch.from_numpy(allowed == 0).to(self._device, non_blocking=True)
        if len(self.constrained) == len(logits):  # every row constrained: no gather and scatter
            return logits.masked_fill(forbidden, -math.inf)
        rows = self._constrained_rows
        return logits.index_copy(0, rows, logits.index_select(0, rows).masked_fill(forbidden, -math.inf))

    def _probs(self, g: _Group, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unnormalised distribution group `g` draws from: [n, k] over `slice_ids` [n, k], or [n, vocab]."""
        scaled = logits.index_select(0, g.rows) / g.temperature
        slice_ids = None
        if g.k:
            scaled, slice_ids = scaled.topk(g.k, dim=-1)  # sorted, descending
            if g.top_k is not None:
                scaled = scaled.masked_fill(self._rank[: g.k] >= g.top_k, -math.inf)
        probs = scaled.softmax(-1)
        if g.top_p is not None:  # drop a token once the mass before it passes top_p; the first always stays
            probs = probs.masked_fill(probs.cumsum(-1) - probs > g.top_p, 0.0)
        if g.log_min_p is not None:  # p < min_p * p_max, in logits; after top-p, as Hugging Face orders them
            probs = probs.masked_fill(scaled < scaled.amax(-1, keepdim=True) + g.log_min_p, 0.0)
        return probs, slice_ids

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """What each row draws from, normalised [rows, vocab]: one-hot for greedy rows (for tests and tools)."""
        if self.controls is not None:
            logits = self.controls.apply(logits)
        if self.constrained:
            logits = self._mask(logits)
        out = torch.zeros_like(logits).scatter_(1, logits.argmax(-1, keepdim=True), 1.0)
        for g in self.groups:
            probs, slice_ids = self._probs(g, logits)
            probs = probs / probs.sum(-1, keepdim=True)
            dense = probs if slice_ids is None else torch.zeros_like(out[: len(probs)]).scatter_(1, slice_ids, probs)
            out.index_copy_(0, g.rows, dense)
        return out

    def logprobs(
        self, logits: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """For the rows in `logprob_rows`: chosen token's logprob [n], top values [n, N] and ids [n, N].

        From the raw logits, before temperature, filtering and a grammar's mask: what the model thinks, not what was
        drawn.
        """
        if self._logprob_index is None:
            return None
        lp = logits.index_select(0, self._logprob_index).log_softmax(-1)
        chosen = lp.gather(1, tokens.index_select(0, self._logprob_index).unsqueeze(1)).squeeze(1)
        top, top_ids = lp.topk(self._logprob_top, dim=-1)
        return chosen, top, top_ids


def admission_error(prompt_ids: Sequence[int], p: SamplingParams, context: int, vocab: int) -> str | None:
    """Why the engine cannot serve `prompt_ids` with `p` (its context, its vocabulary of `vocab`), or None if it can."""
    if not prompt_ids:
        return "the prompt is empty"
    if p.max_tokens < (0 if p.prompt_logprobs is not None else 1):
        return "max_tokens must be at least 1 (0 only to score the prompt)"
    if len(prompt_ids) + p.max_tokens > context:
        return (
            f"prompt ({len(prompt_ids)} tokens) + max_tokens ({p.max_tokens}) exceeds the model's context"
            f" of {context} tokens"
        )
    for name, ids in (("prompt", prompt_ids), ("stop_token_ids", p.stop_token_ids)):
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            return f"{name} holds token ids outside 0..{vocab - 1}"
    if not (math.isfinite(p.temperature) and p.temperature >= 0):
        return "temperature must be a finite number >= 0"
    if p.top_k < 0:
        return "top_k must be >= 0 (0 = off)"
    if not 0 < p.top_p <= 1:
        return "top_p must be in (0, 1]"
    for name, value in (("logprobs", p.logprobs), ("prompt_logprobs", p.prompt_logprobs)):
        if value is not None and not 0 <= value <= MAX_LOGPROBS:
            return f"{name} must be in 0..{MAX_LOGPROBS}"
    if p.seed is not None and not -(2**63) <= p.seed < 2**64:
        return "seed must fit in 64 bits"
    if not 0 <= p.min_p <= 1:
        return "min_p must be in [0, 1]"
    for name, penalty in (("frequency_penalty", p.frequency_penalty), ("presence_penalty", p.presence_penalty)):
        if not -2 <= penalty <= 2:
            return f"{name} must be in [-2, 2]"
    if not 0 < p.repetition_penalty <= 2:
        return "repetition_penalty must be in (0, 2]"
    if not 0 <= p.min_tokens <= p.max_tokens:
        return "min_tokens must be in 0..max_tokens"
    if len(p.logit_bias) > MAX_LOGIT_BIAS:
        return f"logit_bias holds more than {MAX_LOGIT_BIAS} entries"
    for token, bias in p.logit_bias:
        if not (isinstance(token, int) and 0 <= token < vocab):
            return f"logit_bias token id {token} is outside 0..{vocab - 1}"
        if not -100 <= bias <= 100:
            return f"logit_bias of token {token} must be in [-100, 100]"
    return None


def prompt_logprobs(logits: torch.Tensor, ids: torch.Tensor, asks: list[tuple[int, int]]) -> list[list[PromptLogprob]]:
    """Each prompt token's logprob after the ones before it, with its top-k, from a prefill's logits [rows, width,
    vocab] over `ids` [rows, width]; `asks`: each row's (prompt length, k)."""
    lp = logits[:, :-1].float().log_softmax(-1)  # position t predicts token t + 1
    chosen = lp.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)
    top, top_ids = lp.topk(max(k for _, k in asks), dim=-1)
    out = []
    for row, (length, k) in enumerate(asks):
        n = length - 1
        values, ids_k = top[row, :n, :k].tolist(), top_ids[row, :n, :k].tolist()
        rows = zip(chosen[row, :n].tolist(), ids_k, values, strict=True)
        out.append([(c, list(zip(i, v, strict=True))) for c, i, v in rows])
    return out
