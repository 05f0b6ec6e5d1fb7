"""POST /v1/classify: the pixel classifier, batched by its worker's dynamic batcher (service/batch_worker.py)."""

import time
from pathlib import Path
from typing import NamedTuple

import torch
from litserve.specs.base import LitSpec

from model.pixels import PixelClassifier, load_pixels
from service import metrics
from service.batch_worker import BatchChannel, BatchLoop
from service.litserve_adapter import GuardedAPI
from service.schemas import ClassifyRequest, ClassifyResponse
from service.schemas.classify import Activations


class PixelInput(NamedTuple):
    pixels: list[float]
    explain: bool


class PixelOutput(NamedTuple):
    probabilities: list[float]
    activations: Activations | None


class ClassifyAPI(GuardedAPI):
    """Requests are decoded to 9 floats, stacked into one [B, 9] tensor and classified in one forward pass."""

    def __init__(self, weights_dir: Path, channel: BatchChannel, spec: LitSpec | None = None) -> None:
        # The spec (service/batch_client.py's, in the server) makes the route; tests run the hooks without one.
        super().__init__(
            max_batch_size=channel.limits.max_batch_size,
            api_path="/v1/classify",
            loop=BatchLoop(channel),
            spec=spec,
        )
        self.weights_dir = weights_dir

    def setup(self, device: str) -> None:
        """Runs once in each worker process: load the weights onto this worker's device and warm up."""
        # One thread: a batch of nine-pixel inputs is far too small to split, and torch's default (a thread per
        # core) then only spins idle threads beside the HTTP servers.
        torch.set_num_threads(1)
        self.device = torch.device(device)
        self.model: PixelClassifier = load_pixels(self.weights_dir, self.device)
        self.symbols = self.model.config.symbols
        self.model.predict(torch.zeros(1, 9, device=self.device))

    # The annotation makes the route validate the body against ClassifyRequest (422 on a bad one) before it is
    # sent: one bad item would otherwise fail the whole batch it lands in.
    def decode_request(self, request: ClassifyRequest) -> PixelInput:
        return PixelInput(request.flat(), request.explain)

    def batch(self, inputs: list[PixelInput]) -> list[PixelInput]:
        return inputs

    def predict(self, x: list[PixelInput] | PixelInput) -> list[PixelOutput] | PixelOutput:
        if isinstance(x, PixelInput):
            # With max_batch_size=1 the batch thread skips batch()/unbatch() and passes one decoded request.
            return self._classify([x])[0]
        return self._classify(x)

    def _classify(self, inputs: list[PixelInput]) -> list[PixelOutput]:
        start = time.perf_counter()
        pixels = torch.tensor([i.pixels for i in inputs], dtype=torch.float32, device=self.device)
        if any(i.explain for i in inputs):
            layers = {name: values.cpu() for name, values in self.model.activations(pixels).items()}
            probs = torch.softmax(layers["output"], dim=-1)
        else:
            layers, probs = {}, self.model.predict(pixels).cpu()  # one op on the device, one copy back
        metrics.CLASSIFY_PREDICT_SECONDS.observe(time.perf_counter() - start)
        metrics.CLASSIFY_BATCH_SIZE.observe(len(inputs))
        return [
            PixelOutput(p, Activations(**{k: v[row].tolist() for k, v in layers.items()}) if i.explain else None)
            for row, (i, p) in enumerate(zip(inputs, probs.tolist(), strict=True))
        ]

    def unbatch(self, output: list[PixelOutput]) -> list[PixelOutput]:
        return output

    def encode_response(self, output: PixelOutput) -> ClassifyResponse:
        probs = output.probabilities
        best = max(range(len(probs)), key=probs.__getitem__)
        metrics.CLASSIFY_PREDICTIONS.labels(self.symbols[best]).inc()
        return ClassifyResponse(
            symbol=self.symbols[best],
            probabilities=dict(zip(self.symbols, probs, strict=True)),
            activations=output.activations,
        )
