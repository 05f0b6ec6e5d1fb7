"""Controls applied to the logits before a token is drawn: logit bias, min_tokens, and the repetition, frequency and
presence penalties, in vLLM's order and with its semantics (OpenAI's for frequency and presence).

Only the rows that use a control are touched, and only when at least one does: a batch of plain requests runs
exactly the sampling it ran before. Everything a step needs is on the device, so applying the controls and
counting the tokens they depend on costs no host sync.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from model.sampling import SamplingParams


class TokenCounts:
    """Per cache row, on the device: how often each token was generated, and which tokens the prompt holds."""

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.generated = torch.zeros(rows, vocab, device=device)  # float32: subtracted from logits as is
        self.in_prompt = torch.zeros(rows, vocab, dtype=torch.bool, device=device)

    def start(self, row: int, prompt: Sequence[int]) -> None:
        """Row `row` now holds a new sequence with `prompt`."""
        self.generated[row].zero_()
        self.in_prompt[row].zero_()
        self.in_prompt[row, torch.tensor(prompt, device=self.in_prompt.device)] = True

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Rows `src` move to rows `dst` (the engine keeps its rows contiguous)."""
        self.generated[dst] = self.generated[src]
        self.in_prompt[dst] = self.in_prompt[src]


class Controls:
    """The controls of the rows of one sampling plan that use any, as device tensors built once with the plan."""

    def __init__(
        self, rows: Sequence[tuple[SamplingParams, int]], row0: int, counts: TokenCounts, device: torch.device
    ) -> None:
        """`rows[i]` = (params, tokens generated so far) of plan row i, which is cache row `row0 + i`."""
        members = [i for i, (p, generated) in enumerate(rows) if p.uses_controls_at(generated)]
        params = [rows[i][0] for i in members]

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device).unsqueeze(1)

        self._device = device
        self._counts = counts
        self.rows = torch.tensor(members, device=device)  # plan rows
        self._cache_rows = self.rows + row0
        self._ones = torch.ones(len(members), device=device)
        self._repetition = column([p.repetition_penalty for p in params])
        self._frequency = column([p.frequency_penalty for p in params])
        self._presence = column([p.presence_penalty for p in params])
        self._uses_repetition = any(p.repetition_penalty != 1 for p in params)
        self._uses_frequency = any(p.frequency_penalty for p in params)
        self._uses_presence = any(p.presence_penalty for p in params)
        # logit_bias and the stop ids that min_tokens blocks: sparse (row, token) pairs, rows as in `self.rows`.
        bias = [(j, t, b) for j, p in enumerate(params) for t, b in p.logit_bias]
        self._bias = self._pairs([(j, t) for j, t, _ in bias])
        self._bias_values = torch.tensor([b for _, _, b in bias], device=device)
        blocked = [(j, t) for j, p in enumerate(params) if p.min_tokens for t in p.stop_token_ids]
        self._blocked = self._pairs(blocked)
        # Tokens each row must still generate before a stop id may end it; counted down on the device each step.
        left = [max(0, rows[i][0].min_tokens - rows[i][1]) for i in members]
        self._left = torch.tensor(left, device=device)

    @classmethod
    def of(
        cls, rows: Sequence[tuple[SamplingParams, int]], row0: int, counts: TokenCounts, device: torch.device
    ) -> Controls | None:
        """The controls of `rows`, or None when no row uses any (the common case costs nothing)."""
        if not any(p.uses_controls_at(generated) for p, generated in rows):
            return None
        return cls(rows, row0, counts, device)

    def _pairs(self, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not pairs:
            return None
        return (
            torch.tensor([r for r, _ in pairs], device=self._device),
            torch.tensor([t for _, t in pairs], device=self._device),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """New float32 logits [rows, vocab] with the controls applied; `logits` itself stays the model's."""
        x = logits.index_select(0, self.rows)
        if self._bias is not None:
            x.index_put_(self._bias, self._bias_values, accumulate=True)
        if self._blocked is not None:
            r, t = self._blocked
            x[r, t] = torch.where(self._left[r] > 0, -math.inf, x[r, t])
        if self._uses_repetition or self._uses_frequency or self._uses_presence:
            generated = self._counts.generated.index_select(0, self._cache_rows)
            if self._uses_repetition:  # tokens of the prompt or the output: divide a positive logit, multiply others
                seen = self._counts.in_prompt.index_select(0, self._cache_rows) | (generated > 0)
                penalised = torch.where(x > 0, x / self._repetition, x * self._repetition)
                x = torch.where(seen, penalised, x)
            if self._uses_frequency:
                x = x - generated * self._frequency
            if self._uses_presence:
                x = x - (generated > 0) * self._presence
        out = logits.clone()
        out.index_copy_(0, self.rows, x)
        return out

    def record(self, tokens: torch.Tensor) -> None:
        """Count the tokens just drawn (`tokens` [plan rows]) for the next step's penalties and min_tokens."""
        chosen = tokens.index_select(0, self.rows)
        self._counts.generated.index_put_((self._cache_rows, chosen), self._ones, accumulate=True)
        self._left.sub_(1).clamp_(min=0)
