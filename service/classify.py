"""POST /v1/classify: the pixel classifier behind LitServe's dynamic batching."""

# No `from __future__ import annotations` here: LitServe reads decode_request's annotation without evaluating
# strings, and FastAPI would then take the body for a query parameter.

import time
from pathlib import Path

import litserve as ls
import torch

from model.pixels import PixelClassifier, load_pixels
from service import metrics
from service.batching import batched_loop
from service.schemas import ClassifyRequest, ClassifyResponse


class ClassifyAPI(ls.LitAPI):
    """Requests are decoded to 9 floats, stacked into one [B, 9] tensor and classified in one forward pass."""

    def __init__(self, weights_dir: Path, max_batch_size: int = 32, batch_timeout: float = 0.001) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            api_path="/v1/classify",
            loop=batched_loop(max_batch_size),
        )
        self.weights_dir = weights_dir

    def setup(self, device: str) -> None:
        """Runs once in each worker process: load the weights onto this worker's device and warm up."""
        self.device = torch.device(device)
        self.model: PixelClassifier = load_pixels(self.weights_dir, self.device)
        self.symbols = self.model.config.symbols
        self.model.predict(torch.zeros(1, 9, device=self.device))

    # The annotation makes FastAPI validate the body against ClassifyRequest (422 on a bad one) before it is
    # queued: one bad item would otherwise fail the whole batch it lands in.
    def decode_request(self, request: ClassifyRequest) -> list[float]:
        return request.flat()

    def batch(self, inputs: list[list[float]]) -> torch.Tensor:
        return torch.tensor(inputs, dtype=torch.float32, device=self.device)

    def predict(self, x: torch.Tensor | list[float]) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return self._classify(x)
        # With max_batch_size=1 LitServe skips batch()/unbatch() and passes one decoded request.
        return self._classify(self.batch([x]))[0]

    def _classify(self, pixels: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        probs = self.model.predict(pixels).cpu()  # one op on the device, one copy back
        metrics.CLASSIFY_PREDICT_SECONDS.observe(time.perf_counter() - start)
        metrics.CLASSIFY_BATCH_SIZE.observe(len(pixels))
        return probs

    def unbatch(self, output: torch.Tensor) -> list[list[float]]:
        return output.tolist()  # type: ignore[no-any-return]

    def encode_response(self, output: list[float] | torch.Tensor) -> ClassifyResponse:
        probs = output.tolist() if isinstance(output, torch.Tensor) else output
        best = max(range(len(probs)), key=probs.__getitem__)
        metrics.CLASSIFY_PREDICTIONS.labels(self.symbols[best]).inc()
        return ClassifyResponse(symbol=self.symbols[best], probabilities=dict(zip(self.symbols, probs, strict=True)))
