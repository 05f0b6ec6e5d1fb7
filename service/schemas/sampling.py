"""What every GPT generation request shares (completions, chat): sampling fields, and their one conversion into the
engine's `SamplingParams`.

Priority, as in vLLM: a value the request gives, else the server's default (the model folder's
generation_config.json, when it sets one), else OpenAI's default. Fields default to None ("not given") so the three
can be told apart. Each value is bounded here, once; the engine checks only what it alone knows (the context, the
vocabulary). To add a control: a field here, a line in `to_sampling_params`, a field in `SamplingDefaults` if the
model folder may set it.
"""

from __future__ import annotations

import functools
import json
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.sampling import SamplingParams
from service.schemas.controls import SamplingControls

MAX_N = 8
MAX_STOP = 16  # evaluation harnesses send the end-of-text string beside four or more of their own

# OpenAI's defaults, used when neither the request nor the model folder sets a value.
OPENAI_TEMPERATURE = 1.0
OPENAI_TOP_P = 1.0
NO_TOP_K = 0  # top_k is an extension (as in vLLM); 0 is off


class Lenient(BaseModel):
    """Unknown parameters are ignored, as OpenAI-compatible servers do; a null is a parameter not given."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_given(cls, data: Any) -> Any:
        # Clients send unset options as null (OpenAI's spec allows it): a field with a default then takes it.
        if not isinstance(data, dict):
            return data
        defaulted = cls._defaulted_fields()
        return {key: value for key, value in data.items() if value is not None or key not in defaulted}

    @classmethod
    @functools.cache
    def _defaulted_fields(cls) -> frozenset[str]:
        """The fields with a default other than None: read once per model class, not on every request."""
        return frozenset(name for name, f in cls.model_fields.items() if not f.is_required() and f.default is not None)


class StreamOptions(Lenient):
    include_usage: bool = False


@dataclass(frozen=True)
class SamplingDefaults:
    """The server's defaults: the sampling keys the model folder's generation_config.json sets, and no others."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> Self:
        path = folder / "generation_config.json"
        config: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return cls(
            temperature=config.get("temperature"),
            top_p=config.get("top_p"),
            top_k=config.get("top_k"),
            max_tokens=config.get("max_new_tokens"),
        )


def _pick(asked: Any, server: Any, openai: Any) -> Any:
    return asked if asked is not None else server if server is not None else openai


class SamplingRequest(SamplingControls, Lenient):
    MAX_TOKENS_PARAM: ClassVar[str] = "max_tokens"  # the field a 400 names when the bound on new tokens is too large

    model: str | None = Field(default=None, description="Model id from /v1/models; the GPT when omitted.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 means greedy; default 1.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling; default 1.")
    top_k: int | None = Field(default=None, ge=0, le=1000, description="0 means no top-k cut (extension, as in vLLM).")
    stop: str | list[str] | None = Field(default=None, description="Stop strings, matched on text, not returned.")
    seed: int | None = Field(
        default=None, ge=-(2**63), le=2**63 - 1, description="Any int64; taken modulo 2^63 (-1 samples as 2^63 - 1)."
    )
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="Accepted and ignored.")
    timeout: float | None = Field(
        default=None,
        gt=0.0,
        le=86_400.0,
        description="Seconds this request may take in all (extension); it can only lower the server's deadline.",
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return [s for s in stops if s] or None  # an empty stop string matches nothing: it is no stop

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    # ---- what each protocol names differently -------------------------------------------------------------------

    @abstractmethod
    def asked_max_tokens(self) -> int | None:
        """The request's own bound on new tokens, if it gives one."""

    @abstractmethod
    def openai_max_tokens(self, room: int) -> int:
        """OpenAI's default bound on new tokens, given the `room` the context leaves after the prompt."""

    @abstractmethod
    def asked_logprobs(self) -> int | None:
        """Alternatives per token to report (0 = the chosen token's only), or None for no logprobs."""

    def to_sampling_params(
        self, defaults: SamplingDefaults, *, room: int, index: int, stop_token_ids: tuple[int, ...]
    ) -> SamplingParams:
        """The engine's parameters for choice `index`; `room` is what the context leaves after the prompt.

        A default bound on new tokens is cut to the room; a bound the request gives is kept (the caller answers 400
        when it does not fit, naming it).
        """
        max_tokens = self.asked_max_tokens()
        if max_tokens is None:
            max_tokens = min(_pick(None, defaults.max_tokens, self.openai_max_tokens(room)), room)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_pick(self.temperature, defaults.temperature, OPENAI_TEMPERATURE),
            top_k=_pick(self.top_k, defaults.top_k, NO_TOP_K),
            top_p=_pick(self.top_p, defaults.top_p, OPENAI_TOP_P),
            # Each choice its own seed, so that n > 1 gives different samples, reproducibly; any int64 maps into
            # the engine's range [0, 2^63) by the same modulo.
            seed=None if self.seed is None else (self.seed + index) % 2**63,
            logprobs=self.asked_logprobs(),
            **self.control_params(stop_token_ids),
        )
