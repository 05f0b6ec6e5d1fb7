"""Muon (momentum, then Newton-Schulz orthogonalisation) for 2-D weights, in the parameters' own dtype.

`torch.optim.Muon` runs its Newton-Schulz iterations in bf16 whatever the parameter's dtype, which is slower than the
whole forward and backward on a CPU without bf16 units (docs/training.md). This is the same algorithm (Keller
Jordan's quintic coefficients, Moonshot's AdamW-matching scale as torch's `adjust_lr_fn="match_rms_adamw"`) with the
iterations in fp32 on the CPU and bf16 on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximation of U V^T for grad = U S V^T (singular values pushed towards 1)."""
    a, b, c = NS_COEFFICIENTS
    x = grad.bfloat16() if grad.is_cuda else grad.float()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is then the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(grad.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, scaled to AdamW's update RMS (0.2 sqrt(max(A, B))), decoupled decay."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "ns_steps": ns_steps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, decay, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)
                update = orthogonalise(p.grad.add(buf, alpha=mu), group["ns_steps"])
                p.mul_(1.0 - lr * decay)
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
