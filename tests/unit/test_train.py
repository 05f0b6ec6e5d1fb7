"""The trainer's optimiser and schedule: Muon's orthogonalisation, the learning-rate shapes, a few steps learn."""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel

from model.gpt import gpt_config
from model.muon import Muon, orthogonalise
from model.train_gpt import build_optimizers, lr_factor, parse_args


def test_orthogonalise_pushes_singular_values_towards_one_as_torchs_muon_does() -> None:
    from torch.optim._muon import _zeropower_via_newtonschulz  # torch's own, in bf16

    torch.manual_seed(0)
    for shape in [(48, 192), (192, 48)]:
        grad = torch.randn(*shape) * torch.logspace(-1, 1, shape[1])  # singular values spread over 5x and more
        assert torch.linalg.svdvals(grad).max() / torch.linalg.svdvals(grad).min() > 5
        ours = orthogonalise(grad)
        s = torch.linalg.svdvals(ours)
        # Keller Jordan's quintic leaves singular values roughly in (0.5, 1.5) rather than exactly 1.
        assert s.max() < 1.5 and s.min() > 0.5, (shape, s.min(), s.max())
        reference = _zeropower_via_newtonschulz(grad, (3.4445, -4.775, 2.0315), 5, 1e-7).float()
        assert (ours - reference).abs().max() < 0.05  # bf16 against fp32


def test_muon_refuses_vectors() -> None:
    try:
        Muon([torch.nn.Parameter(torch.zeros(4))])
    except ValueError as exc:
        assert "2-D" in str(exc)
    else:
        raise AssertionError("Muon accepted a 1-D parameter")


def test_wsd_is_flat_then_decays_to_zero_and_cosine_to_its_floor() -> None:
    args = parse_args(["--warmup-steps", "10", "--cooldown", "0.25"])
    assert lr_factor(0, 0.0, args) == 0.1 and lr_factor(9, 0.0, args) == 1.0
    assert lr_factor(100, 0.5, args) == 1.0 and lr_factor(100, 0.75, args) == 1.0
    assert abs(lr_factor(100, 0.875, args) - 0.5) < 1e-9 and lr_factor(100, 1.0, args) == 0.0
    cosine = parse_args(["--schedule", "cosine", "--warmup-steps", "10", "--min-lr-ratio", "0.1"])
    assert abs(lr_factor(100, 1.0, cosine) - 0.1) < 1e-9 and abs(lr_factor(100, 0.5, cosine) - 0.55) < 1e-9


def test_every_parameter_is_trained_once_and_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt_config(64, n_layer=2, n_head=2, n_embd=32, n_positions=32))
    for name in ("muon", "adamw"):
        args = parse_args(["--optimizer", name, "--lr", "3e-3", "--muon-lr", "1e-2"])
        net = GPT2LMHeadModel(model.config)
        net.load_state_dict(model.state_dict())
        optims = build_optimizers(net, args)
        owned = [id(p) for o in optims for g in o.param_groups for p in g["params"]]
        assert sorted(owned) == sorted(id(p) for p in net.parameters())  # each once, the tied head included
        x = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
        losses = []
        for _ in range(20):
            loss = net(input_ids=x, labels=x).loss
            for o in optims:
                o.zero_grad()
            loss.backward()
            for o in optims:
                o.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] - 0.5, (name, losses)
