"""Build the server in the main process: a channel folder, the model workers LitServe will spawn, and the API side
on LitServe's app, which it forks into the API servers. Nothing runs until `run()` (runtime/lifecycle.py)."""

from __future__ import annotations

from dataclasses import dataclass

import litserve as ls
import torch

from model.gpt import pick_dtype
from service import metrics
from service.api.app import Channels, add_api
from service.runtime.litserve_adapter import (
    KeepsAPIServers,
    devices_count,
    hide_health_from_schema,
    watch_workers_ourselves,
    worker_count,
)
from service.runtime.state import ServerState
from service.settings import Settings
from service.transport.channel import ChannelAddress
from service.workers.batched import BatchChannel
from service.workers.batcher import BatchLimits
from service.workers.classify import ClassifierWorker
from service.workers.embeddings import EmbeddingsWorker
from service.workers.gpt import GPTWorker


@dataclass(frozen=True)
class BuiltServer:
    """The LitServer, and the channel folder to remove when it stops (the other channels live inside it)."""

    server: KeepsAPIServers
    channels: Channels

    def remove_channels(self) -> None:
        self.channels.gpt.remove()


def build_workers(settings: Settings, channels: Channels) -> list[ls.LitAPI]:
    """The model workers, each with its channel and batching; LitServe spawns them with these objects alone."""
    classify = BatchLimits(
        settings.classify_max_batch_size, settings.classify_batch_timeout, settings.classify_max_queue_size
    )
    embeddings = BatchLimits(
        settings.embeddings_max_batch_size, settings.embeddings_batch_timeout, settings.embeddings_max_queue_size
    )
    return [
        ClassifierWorker(settings.pixels_dir, BatchChannel(channels.classify, classify)),
        GPTWorker(settings, channels.gpt),
        EmbeddingsWorker(settings, BatchChannel(channels.embeddings, embeddings)),
    ]


def build_server(settings: Settings, state: ServerState | None = None) -> BuiltServer:
    """The LitServer with every worker and every route; the channels' socket folder is made here."""
    state = state or ServerState()
    devices = devices_count(settings.accelerator)
    gpt = ChannelAddress.create(workers=devices)  # one GPT worker per device
    channels = Channels(
        gpt=gpt,
        classify=gpt.beside("classify", settings.classify_workers * devices),
        embeddings=gpt.beside("embeddings", devices),
    )
    workers = build_workers(settings, channels)
    server = KeepsAPIServers(
        workers,
        accelerator=settings.accelerator,
        workers_per_device={"/v1/classify": settings.classify_workers},
        timeout=settings.request_timeout,
        max_payload_size=settings.max_payload_size,  # an int: LitServe's string form fails every request
        released=state.released,
    )
    # How long LitServe waits for each API server to exit once it stops it (its default is 30 s, longer than
    # `docker stop` waits before SIGKILL). Uvicorn then waits for no request (litserve_adapter `_APIServer`): on
    # SIGTERM the Guard has already drained them for shutdown_grace_seconds.
    server.uvicorn_graceful_timeout = 1.0
    add_api(server.app, settings, state, channels)
    hide_health_from_schema(server.app)
    watch_workers_ourselves(server)  # runtime/supervisor.py watches every process instead
    addresses = {
        "/v1/classify": channels.classify,
        "/v1/completions": channels.gpt,
        "/v1/embeddings": channels.embeddings,
    }
    for path, address in addresses.items():
        if worker_count(server, path) != address.workers:
            raise RuntimeError(f"LitServe starts a different number of {path} workers than its channel has")
    _record_info(settings, server)
    return BuiltServer(server, channels)


def _record_info(settings: Settings, server: ls.LitServer) -> None:
    """The build and model info metrics, from what the workers will load: weights headers, device, dtype."""
    device = str(server.devices[0]).split(":")[0]  # "cuda:0" -> "cuda": one series per model, not per GPU
    gpt_dtype = str(pick_dtype(torch.device(device))).removeprefix("torch.")
    metrics.record_info(
        {
            settings.gpt_model_id: (settings.gpt_dir / "model.safetensors", gpt_dtype),
            settings.pixels_model_id: (settings.pixels_dir / "model.safetensors", "float32"),  # the classifier's
        },
        device,
    )
