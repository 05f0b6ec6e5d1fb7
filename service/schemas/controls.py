"""The sampling controls beyond temperature and top-k/top-p that every generation endpoint takes (completions, chat):
penalties, logit bias, min-p, min_tokens, ignore_eos; OpenAI's ranges, vLLM's semantics (model/logits.py).

A mixin of fields with their bounds, and one conversion into `SamplingParams` keyword arguments, so that each
endpoint's `to_sampling_params` adds `**request.control_params(...)` and nothing re-derives them. `UNSUPPORTED`
names an endpoint's OpenAI parameters that are refused (a 400 naming them) rather than silently ignored. The
vocabulary is the server's to check (`logit_bias_error`): the schema does not know it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from model.sampling import MAX_LOGIT_BIAS

MAX_BIAS = 100.0


class SamplingControls(BaseModel):
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ()

    frequency_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Subtracted from a token's logit per time it was generated."
    )
    presence_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Subtracted from a token's logit once it has been generated."
    )
    repetition_penalty: float = Field(
        default=1.0,
        gt=0.0,
        le=2.0,
        description="Extension (vLLM, Hugging Face): divides positive logits and multiplies negative ones of tokens"
        " in the prompt or the output; 1 is off.",
    )
    logit_bias: dict[str, float] | None = Field(
        default=None,
        description=f"Up to {MAX_LOGIT_BIAS} token ids (as strings, JSON's keys) and a bias in -100..100 added to"
        " their logits before sampling: -100 bans a token, 100 all but forces it.",
    )
    min_p: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Extension (vLLM): drop tokens below min_p times the top token's probability; 0 is off.",
    )
    min_tokens: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="Extension (vLLM): the end-of-text token cannot end a choice before this many tokens.",
    )
    ignore_eos: bool = Field(
        default=False, description="Extension (vLLM): generate past the end-of-text token, up to max_tokens."
    )

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return None
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for key, bias in v.items():
            if not key.isdecimal():
                raise ValueError(f"key {key!r} is not a token id")
            if not -MAX_BIAS <= bias <= MAX_BIAS:
                raise ValueError(f"the bias of token {key} is outside -100..100")
        return v

    def refused_parameter(self) -> str | None:
        """The first parameter of `UNSUPPORTED` the request sets, if any."""
        return next((name for name in self.UNSUPPORTED if getattr(self, name, None) is not None), None)

    def logit_bias_error(self, vocab: int) -> str | None:
        """The `logit_bias` entry whose token id is outside the vocabulary, as a parameter name; None if none."""
        return next((f"logit_bias.{key}" for key in self.logit_bias or {} if int(key) >= vocab), None)

    def control_params(self, stop_token_ids: tuple[int, ...]) -> dict[str, Any]:
        """`SamplingParams` keyword arguments for these controls, the stop ids included (none with ignore_eos)."""
        bias = tuple((int(key), float(value)) for key, value in (self.logit_bias or {}).items())
        return {
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "repetition_penalty": self.repetition_penalty,
            "logit_bias": bias,
            "min_p": self.min_p,
            "min_tokens": self.min_tokens,
            "stop_token_ids": () if self.ignore_eos else stop_token_ids,
        }
