"""The pixel classifier: symbols, noise, network shape and ranges, training, and the shipped weights."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from model.pixels import (
    DEFAULT_DIR,
    EVAL_NOISE,
    EVALUATION_FILE,
    SYMBOLS,
    Noise,
    PixelClassifier,
    PixelConfig,
    evaluate,
    hamming,
    load_pixels,
    noisy_examples,
    save_pixels,
    single_flip_examples,
    symbol_templates,
)
from model.train_pixels import train


@pytest.fixture(scope="module")
def shipped() -> PixelClassifier:
    return load_pixels(DEFAULT_DIR)


def test_four_symbols_pairwise_at_least_three_pixels_apart() -> None:
    templates = symbol_templates()
    assert len(SYMBOLS) == 4 and templates.shape == (4, 9)
    assert set(templates.unique().tolist()) == {-1.0, 1.0}
    for a, b in itertools.combinations(range(4), 2):
        assert hamming(templates[a], templates[b]) >= 3, (SYMBOLS[a], SYMBOLS[b])


def test_noisy_examples_are_clipped_deterministic_and_noisy() -> None:
    noise = Noise(sigma=0.4, flip_prob=0.1)
    x, labels = noisy_examples(5000, noise, torch.Generator().manual_seed(7))
    again, labels_again = noisy_examples(5000, noise, torch.Generator().manual_seed(7))
    assert x.shape == (5000, 9) and labels.shape == (5000,)
    assert torch.equal(x, again) and torch.equal(labels, labels_again)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # About flip_prob of the pixels land on the wrong side of zero (flipped, or pushed over by the noise).
    wrong_side = (torch.sign(x) != symbol_templates()[labels]).float().mean()
    assert 0.08 < wrong_side < 0.2
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_noiseless_examples_are_the_symbols() -> None:
    x, labels = noisy_examples(100, Noise(sigma=0.0, flip_prob=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(x, symbol_templates()[labels])


def test_single_flips_cover_every_pixel_of_every_symbol() -> None:
    x, labels = single_flip_examples()
    assert x.shape == (36, 9)
    assert ((x != symbol_templates()[labels]).sum(dim=1) == 1).all()


def test_shapes_and_probabilities() -> None:
    model = PixelClassifier(PixelConfig())
    x = torch.rand(5, 9) * 2 - 1
    assert model(x).shape == (5, 4)
    probs = model.predict(x)
    assert probs.shape == (5, 4)
    assert torch.allclose(probs.sum(dim=1), torch.ones(5))
    assert (probs > 0).all()


def test_hidden_layers_squash_to_their_ranges() -> None:
    torch.manual_seed(0)
    model = PixelClassifier(PixelConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1000)  # huge sums: the squashing must still hold the ranges
        h1, h2 = model.hidden(torch.rand(256, 9) * 2 - 1)
    assert h1.min() >= -1 and h1.max() <= 1 and (h1 < 0).any() and (h1 > 0).any()
    assert h2.min() >= 0 and h2.max() <= 1


def test_clamp_weights_bounds_every_parameter() -> None:
    model = PixelClassifier(PixelConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 5)
    model.clamp_weights()
    assert all(p.abs().max() <= 1.0 for p in model.parameters())


def test_training_is_deterministic_and_keeps_weights_bounded() -> None:
    first, losses = train(seed=3, steps=60, lr=5.0)  # a large step would push weights out without the clamp
    second, _ = train(seed=3, steps=60, lr=5.0)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert all(p.abs().max() <= 1.0 for p in first.parameters())
    assert len(losses) == 60


def test_save_and_load_round_trip(tmp_path) -> None:
    model = PixelClassifier(PixelConfig(hidden1=5, hidden2=6))
    save_pixels(model, tmp_path)
    loaded = load_pixels(tmp_path)
    assert loaded.config == model.config
    x = torch.rand(3, 9)
    assert torch.equal(loaded.predict(x), model.predict(x))


def test_shipped_weights_within_bounds(shipped: PixelClassifier) -> None:
    for name, p in shipped.named_parameters():
        assert p.abs().max() <= 1.0, name


def test_shipped_weights_meet_the_quality_bar(shipped: PixelClassifier) -> None:
    result = evaluate(shipped, EVAL_NOISE)
    assert result["clean_accuracy"] == 1.0
    assert result["single_flip_accuracy"] == 1.0
    assert result["held_out_examples"] == 10_000
    assert result["held_out_accuracy"] >= 0.99  # type: ignore[operator]
    # The evaluation shipped beside the weights is the one these weights give.
    saved = json.loads((DEFAULT_DIR / EVALUATION_FILE).read_text())
    assert saved["held_out_accuracy"] == pytest.approx(result["held_out_accuracy"])
    assert saved["held_out_noise"] == result["held_out_noise"]
