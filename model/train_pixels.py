"""Train the 3x3-pixel classifier: python -m model.train_pixels [--out DIR] [--seed N] [--steps N]."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.pixels import (
    DEFAULT_DIR,
    Noise,
    PixelClassifier,
    PixelConfig,
    evaluate,
    noisy_examples,
    save_pixels,
)

# Trained on noisier examples than it is judged on, so the held-out level sits well inside what it has seen.
TRAIN_NOISE = Noise(sigma=0.5, flip_prob=0.05)


def train(
    seed: int = 0, steps: int = 3000, batch_size: int = 512, lr: float = 0.5, momentum: float = 0.9
) -> tuple[PixelClassifier, list[float]]:
    """Mini-batch gradient descent with back-propagation on fresh noisy examples; deterministic per seed."""
    torch.manual_seed(seed)  # the initial weights
    # The training examples: a stream of their own, apart from the held-out set's seed.
    data = torch.Generator().manual_seed(seed + 1)
    model = PixelClassifier(PixelConfig())
    model.clamp_weights()
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    bar = tqdm(range(steps), desc="train pixels", unit="step")
    for step in bar:
        x, labels = noisy_examples(batch_size, TRAIN_NOISE, data)
        loss = F.cross_entropy(model(x), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.clamp_weights()  # the seed's rule: every weight stays within [-1, 1]
        losses.append(loss.detach().item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return model.eval(), losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder for the weights and config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)

    # One thread: the net is tiny, and a bit-for-bit repeatable run matters more than speed.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, losses = train(seed=args.seed, steps=args.steps)
    evaluation = evaluate(model)
    evaluation["train"] = {
        "seed": args.seed,
        "steps": args.steps,
        "final_loss": losses[-1],
        "train_noise": asdict(TRAIN_NOISE),
    }
    save_pixels(model, args.out, evaluation)
    print(json.dumps(evaluation, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
