"""The 3x3-pixel classifier: four symbols, noisy examples, the network, and loading it from its folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

# Pixel values: -1 is black (off), 1 is white (lit). Symbols are lit pixels on a black background.
BLACK, WHITE = -1.0, 1.0
SIDE = 3
N_PIXELS = SIDE * SIDE

# Chosen so that every pair differs in at least 4 pixels: one flipped pixel leaves the symbol
# strictly nearer to itself than to any other, so it stays recognisable.
SYMBOL_DRAWINGS: dict[str, tuple[str, str, str]] = {
    "plus": (".#.", "###", ".#."),
    "cross": ("#.#", ".#.", "#.#"),
    "ring": ("###", "#.#", "###"),
    "dot": ("...", ".#.", "..."),
}
SYMBOLS: tuple[str, ...] = tuple(SYMBOL_DRAWINGS)

DEFAULT_DIR = Path(__file__).resolve().parent / "weights" / "pixels"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EVALUATION_FILE = "evaluation.json"


def symbol_tensor(name: str) -> torch.Tensor:
    """The clean symbol as a flat float tensor of 9 values in {-1, 1}, row by row."""
    rows = SYMBOL_DRAWINGS[name]
    return torch.tensor([WHITE if c == "#" else BLACK for row in rows for c in row], dtype=torch.float32)


def symbol_templates(symbols: tuple[str, ...] = SYMBOLS) -> torch.Tensor:
    """All clean symbols stacked: [n_symbols, 9]."""
    return torch.stack([symbol_tensor(name) for name in symbols])


def hamming(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of pixels in which two clean symbols differ."""
    return int((a != b).sum())


@dataclass(frozen=True)
class Noise:
    """How examples are spoiled: each pixel flips with `flip_prob`, gets N(0, sigma) added, is clipped."""

    sigma: float
    flip_prob: float


# The level the quality bar is measured at (and the README states). A nearest-symbol rule scores about
# 99.65% here: the noise alone makes some examples ambiguous, so 99% is near what any classifier can do.
EVAL_NOISE = Noise(sigma=0.4, flip_prob=0.03)


def noisy_examples(
    n: int, noise: Noise, generator: torch.Generator, symbols: tuple[str, ...] = SYMBOLS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` noisy examples: (pixels [n, 9] in [-1, 1], labels [n]); deterministic per generator seed."""
    templates = symbol_templates(symbols)
    labels = torch.randint(len(symbols), (n,), generator=generator)
    x = templates[labels]
    flips = torch.rand(x.shape, generator=generator) < noise.flip_prob
    x = torch.where(flips, -x, x)
    x = x + noise.sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(BLACK, WHITE), labels


def single_flip_examples(symbols: tuple[str, ...] = SYMBOLS) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clean symbol with exactly one pixel flipped: (pixels [4 * 9, 9], labels)."""
    templates = symbol_templates(symbols)
    xs, labels = [], []
    for label, template in enumerate(templates):
        for pixel in range(N_PIXELS):
            x = template.clone()
            x[pixel] = -x[pixel]
            xs.append(x)
            labels.append(label)
    return torch.stack(xs), torch.tensor(labels)


@dataclass(frozen=True)
class PixelConfig:
    """Shape of the network, saved beside the weights so the folder alone is enough to load it."""

    hidden1: int = 16
    hidden2: int = 16
    symbols: tuple[str, ...] = SYMBOLS
    weight_bound: float = 1.0
    eval_noise: dict[str, float] = field(default_factory=lambda: asdict(EVAL_NOISE))

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PixelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "symbols" in known:
            known["symbols"] = tuple(known["symbols"])  # type: ignore[arg-type]
        return cls(**known)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LayerInfo:
    name: str
    size: int
    activation: str
    bounds: tuple[float, float] | None


# (name, activation, its range): the inputs are pixels in [-1, 1]; the outputs are sums that softmax turns into
# probabilities, so they have no range of their own.
LAYERS: tuple[tuple[str, str, tuple[float, float] | None], ...] = (
    ("input", "identity", (BLACK, WHITE)),
    ("hidden1", "tanh", (-1.0, 1.0)),
    ("hidden2", "sigmoid", (0.0, 1.0)),
    ("output", "softmax", None),
)


class PixelClassifier(nn.Module):
    """9 pixels -> tanh hidden layer -> sigmoid hidden layer -> softmax over the symbols."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden1 = nn.Linear(N_PIXELS, config.hidden1)
        self.hidden2 = nn.Linear(config.hidden1, config.hidden2)
        self.out = nn.Linear(config.hidden2, len(config.symbols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_symbols]; training uses these with cross-entropy (softmax is inside the loss)."""
        h1 = torch.tanh(self.hidden1(x))  # squashed to (-1, 1)
        h2 = torch.sigmoid(self.hidden2(h1))  # squashed to (0, 1)
        return self.out(h2)

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both hidden layers' activations, after their squashing."""
        h1 = torch.tanh(self.hidden1(x))
        return h1, torch.sigmoid(self.hidden2(h1))

    @torch.inference_mode()
    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's values for pixels [B, 9], in LAYERS' order: inputs, both squashed hidden layers, the
        output sums (logits; the probabilities are their softmax)."""
        h1, h2 = self.hidden(x)
        return {"input": x, "hidden1": h1, "hidden2": h2, "output": self.out(h2)}

    def layers(self) -> list[LayerInfo]:
        """The layers as a drawing needs them: name, size, what squashes them and into which range."""
        sizes = (N_PIXELS, self.config.hidden1, self.config.hidden2, len(self.config.symbols))
        return [LayerInfo(name, size, act, bounds) for (name, act, bounds), size in zip(LAYERS, sizes, strict=True)]

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities [B, n_symbols] for pixels [B, 9]: one batched op, on whatever device the model is."""
        return torch.softmax(self.forward(x), dim=-1)

    @torch.no_grad()
    def clamp_weights(self) -> None:
        """Keep every parameter (weights and biases) within [-bound, bound]."""
        bound = self.config.weight_bound
        for p in self.parameters():
            p.clamp_(-bound, bound)


def save_pixels(model: PixelClassifier, folder: Path, evaluation: dict[str, object] | None = None) -> None:
    """Write model.safetensors, config.json and (optionally) evaluation.json into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    if evaluation is not None:
        (folder / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")


def load_pixels(folder: Path = DEFAULT_DIR, device: str | torch.device = "cpu") -> PixelClassifier:
    """Load the classifier from a folder holding model.safetensors and config.json, in eval mode."""
    folder = Path(folder)
    config = PixelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    model = PixelClassifier(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval()


def accuracy(model: PixelClassifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples whose most probable symbol is the label."""
    return float((model.predict(x).argmax(dim=-1) == labels).float().mean())


EVAL_SEED = 20_240_229  # held out: training draws from its own seeded stream, never this one
EVAL_EXAMPLES = 10_000


def evaluate(model: PixelClassifier, noise: Noise = EVAL_NOISE) -> dict[str, object]:
    """The quality bar: clean symbols, all single-flip variants, and a fixed-seed held-out noisy set."""
    symbols = model.config.symbols
    clean = symbol_templates(symbols)
    flips, flip_labels = single_flip_examples(symbols)
    held_out, held_labels = noisy_examples(EVAL_EXAMPLES, noise, torch.Generator().manual_seed(EVAL_SEED), symbols)
    clean_right = int((model.predict(clean).argmax(-1) == torch.arange(len(symbols))).sum())
    flip_right = int((model.predict(flips).argmax(-1) == flip_labels).sum())
    return {
        "clean": f"{clean_right}/{len(symbols)}",
        "clean_accuracy": clean_right / len(symbols),
        "single_flip": f"{flip_right}/{len(flip_labels)}",
        "single_flip_accuracy": flip_right / len(flip_labels),
        "held_out_examples": EVAL_EXAMPLES,
        "held_out_seed": EVAL_SEED,
        "held_out_noise": asdict(noise),
        "held_out_accuracy": accuracy(model, held_out, held_labels),
    }
