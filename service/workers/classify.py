"""The pixel classifier's worker process (POST /v1/classify): 9 pixels in, a symbol's probabilities out, batched."""

import time
from pathlib import Path
from typing import NamedTuple

import torch

from model.pixels import PixelClassifier, load_pixels
from service import metrics
from service.schemas import ClassifyRequest, ClassifyResponse
from service.schemas.classify import Activations
from service.workers.batched import BatchChannel, BatchedWorker


class PixelInput(NamedTuple):
    pixels: list[float]
    explain: bool


class PixelOutput(NamedTuple):
    probabilities: list[float]
    activations: Activations | None


class ClassifierWorker(BatchedWorker):
    """Requests are decoded to 9 floats, stacked into one [B, 9] tensor and classified in one forward pass."""

    def __init__(self, weights_dir: Path, channel: BatchChannel) -> None:
        super().__init__("/v1/classify", channel)
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

    # The route (service/api/batched.py) has validated the body against ClassifyRequest before sending it.
    def decode_request(self, request: ClassifyRequest) -> PixelInput:
        return PixelInput(request.flat(), request.explain)

    def predict(self, inputs: list[PixelInput]) -> list[PixelOutput]:
        start = time.perf_counter()
        pixels = torch.tensor([i.pixels for i in inputs], dtype=torch.float32, device=self.device)
        if any(i.explain for i in inputs):
            layers = {name: values.cpu() for name, values in self.model.activations(pixels).items()}
            probs = torch.softmax(layers["output"], dim=-1)
        else:
            layers, probs = {}, self.model.predict(pixels).cpu()  # one op on the device, one copy back
        m = metrics.get()
        m.classify_predict_seconds.observe(time.perf_counter() - start)
        m.classify_batch_size.observe(len(inputs))
        return [
            PixelOutput(p, Activations(**{k: v[row].tolist() for k, v in layers.items()}) if i.explain else None)
            for row, (i, p) in enumerate(zip(inputs, probs.tolist(), strict=True))
        ]

    def encode_response(self, output: PixelOutput) -> ClassifyResponse:
        probs = output.probabilities
        best = max(range(len(probs)), key=probs.__getitem__)
        metrics.get().classify_predictions.labels(self.symbols[best]).inc()
        return ClassifyResponse(
            symbol=self.symbols[best],
            probabilities=dict(zip(self.symbols, probs, strict=True)),
            activations=output.activations,
        )
