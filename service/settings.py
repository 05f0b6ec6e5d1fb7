"""All server settings in one place, read from TINYSERVE_* environment variables; bad values fail at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import DirectoryPath, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import model
from model.chat_template import ASSISTANT_SPEAKER, USER_SPEAKER

# Weights ship inside the `model` package: defaults resolve there, not against the working directory.
WEIGHTS_DIR = Path(model.__file__).resolve().parent / "weights"


class Settings(BaseSettings):
    """Server settings; each field `name` is read from the environment variable `TINYSERVE_NAME`."""

    model_config = SettingsConfigDict(env_prefix="TINYSERVE_", validate_default=True, extra="ignore")

    # LitServe binds only these three addresses and refuses anything else.
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=1024, le=65535, description="TCP port (LitServe refuses ports below 1024)")
    pixels_dir: DirectoryPath = Field(
        default=WEIGHTS_DIR / "pixels",
        description="folder with the classifier's model.safetensors and config.json",
    )
    gpt_dir: Path = Field(
        default=WEIGHTS_DIR / "gpt", description="folder with the GPT's weights, config and tokenizer"
    )

    classify_max_batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="most classify requests run as one batch (1 turns batching off)",
    )
    # The batcher's max queue delay (Triton's name; the setting keeps its old name). 0: a batch is whatever queued
    # while the last one ran, so batches grow with the load and a lone request never waits for company.
    classify_batch_timeout: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="max queue delay: seconds the oldest queued classify request waits for others to join its batch",
    )
    classify_max_queue_size: int = Field(
        default=256, ge=1, le=100_000, description="classify requests queued in a worker before it answers 503"
    )
    classify_workers: int = Field(default=1, ge=1, le=64, description="classifier worker processes per device")

    gpt_model_id: str = Field(default="tinyserve-gpt", min_length=1, description="the GPT's id in /v1/models")
    pixels_model_id: str = Field(
        default="tinyserve-pixels", min_length=1, description="the classifier's id in /v1/models"
    )
    # Who speaks in a chat when a message has no `name`: headings of the play the chat template writes.
    chat_user_speaker: str = Field(
        default=USER_SPEAKER, pattern=r"^[A-Za-z][A-Za-z0-9 '_-]{0,63}$", description="the user's speaker in chats"
    )
    chat_assistant_speaker: str = Field(
        default=ASSISTANT_SPEAKER,
        pattern=r"^[A-Za-z][A-Za-z0-9 '_-]{0,63}$",
        description="the assistant's speaker in chats (its heading is the generation prompt)",
    )
    gpt_max_batch_size: int = Field(
        default=32,
        ge=1,
        le=512,
        description="most sequences the engine decodes together (continuous batching)",
    )
    # Like vLLM's max_num_batched_tokens for prefill: a burst of new requests is prefilled in chunks, each chunk's
    # first tokens sent before the next chunk runs, and a decode step waits for at most this much prefill (64 tokens:
    # ~3 ms on one CPU thread). Measured on 2 cores, 32 clients, 32-token prompts, through HTTP, A/B in one sitting:
    # TTFT p50 47 ms at 256 -> 27 at 128 -> 19-21 at 64, output tokens/s the same within the noise each time (the raw
    # engine alone loses ~7% from 128 to 64); TTFT p99, the very first burst of 32, grows from ~160 to ~200 ms.
    gpt_max_prefill_tokens: int = Field(
        default=64,
        ge=1,
        le=65_536,
        description="most (padded) prompt tokens prefilled in one engine step; a longer prompt still runs alone",
    )
    # One row holds a sequence's keys and values for the whole context (shipped GPT: 1.5 MiB in float32).
    gpt_prefix_cache_rows: int = Field(
        default=64,
        ge=0,
        le=4096,
        description="sequences whose keys and values are kept for later prompts that begin alike (0 turns it off)",
    )
    embeddings_max_batch_size: int = Field(
        default=8, ge=1, le=256, description="most embeddings requests run as one padded forward pass"
    )
    embeddings_batch_timeout: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="max queue delay: seconds the oldest queued embeddings request (or inside job) waits for others",
    )
    embeddings_max_queue_size: int = Field(
        default=64, ge=1, le=100_000, description="embeddings requests queued in a worker before it answers 503"
    )
    # One thread by default: beside the HTTP servers and a load generator on a 2-core machine, a 2-thread engine
    # stalls whenever one of its threads is descheduled (measured at 32 streams: 3,173 output tokens/s with 1 thread
    # against 2,026 with 2). Raise it where cores are to spare.
    torch_threads: int = Field(
        default=1, ge=1, le=256, description="torch threads in each GPT and embeddings worker process (CPU only)"
    )

    gpt_max_waiting: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="completions beyond gpt_max_batch_size the server accepts before answering 503",
    )
    embeddings_max_inflight: int = Field(
        default=64, ge=1, le=100_000, description="embeddings requests in flight before 503"
    )
    classify_max_inflight: int = Field(
        default=512, ge=1, le=100_000, description="classify requests in flight before 503"
    )
    request_deadline_seconds: float = Field(
        default=300.0,
        gt=0.0,
        le=86_400.0,
        description="total time a completion may take; a request's own `timeout` can only lower it",
    )
    api_key: SecretStr | None = Field(
        default=None, description="when set, /v1/* requires `Authorization: Bearer <key>` (401 otherwise)"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='origins allowed by CORS, as JSON (e.g. ["https://a.example"]); none by default',
    )

    # Two: streaming turns each generated token into Python work in an HTTP server process, and at 32 streams one
    # process was the bottleneck (measured 2,036 against 1,741 output tokens/s, TTFT p50 148 against 191 ms).
    api_servers: int = Field(default=2, ge=1, le=64, description="HTTP server processes (LitServe num_api_servers)")
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="device for the models: auto picks CUDA when present, else CPU"
    )
    http_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="uvicorn's event loop (auto: uvloop when installed)"
    )
    access_log: bool = Field(default=False, description="uvicorn's per-request access log (costs throughput)")
    request_timeout: float = Field(
        default=30.0,
        gt=0.0,
        le=3600.0,
        description="seconds a classify, embeddings or inside request waits for its answer before a 504",
    )
    max_payload_size: int = Field(
        default=1_048_576, ge=1024, le=1_073_741_824, description="largest request body in bytes (413 above)"
    )
    shutdown_grace_seconds: float = Field(
        default=5.0, ge=0.0, le=300.0, description="seconds HTTP servers get to finish requests on shutdown"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="log level of the server and uvicorn"
    )

    @model_validator(mode="after")
    def _batch_timeout_below_request_timeout(self) -> Self:
        # A batch that may wait longer than a request may wait would time requests out.
        if self.classify_batch_timeout >= self.request_timeout:
            raise ValueError("classify_batch_timeout must be below request_timeout")
        return self
