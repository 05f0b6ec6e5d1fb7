"""The GPT-2 forward the engine runs, on the blocks' parameters directly (faster than the HF modules; measured in
docs/architecture-engine.md): keys and values go to the engine's cache through a callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

# attend(layer, qkv) stores the keys and values of qkv [batch, positions, 3 * width] (queries, keys, values, each
# [heads, head_dim] per position) where they belong and returns the attention output [batch * positions, width].
Attend = Callable[[int, torch.Tensor], torch.Tensor]


class CachedForward(Protocol):
    """What the engine needs of a model: its shape, and logits from ids whose attention it supplies."""

    n_layer: int
    n_head: int
    head_dim: int
    context: int
    vocab: int
    device: torch.device
    dtype: torch.dtype

    def attention_scale(self, layer: int) -> float: ...

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        attend: Attend,
        last: torch.Tensor | None = None,
        every: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class _Layer(NamedTuple):
    """One GPT-2 block's parameters (Conv1D weights are [in, out]: x @ weight + bias)."""

    ln_1_weight: torch.Tensor
    ln_1_bias: torch.Tensor
    attn_weight: torch.Tensor
    attn_bias: torch.Tensor
    proj_weight: torch.Tensor
    proj_bias: torch.Tensor
    ln_2_weight: torch.Tensor
    ln_2_bias: torch.Tensor
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    act: Callable[[torch.Tensor], torch.Tensor]
    eps: float
    scale: float

    @classmethod
    def of(cls, block: GPT2Block, activation: str) -> _Layer:
        attn, mlp = block.attn, block.mlp
        # The function itself, not the module: a module call costs hook checks on every one of a step's calls.
        act = _tanh_gelu if activation == "gelu_pytorch_tanh" else mlp.act
        return cls(
            block.ln_1.weight, block.ln_1.bias, attn.c_attn.weight.contiguous(), attn.c_attn.bias,
            attn.c_proj.weight.contiguous(), attn.c_proj.bias, block.ln_2.weight, block.ln_2.bias,
            mlp.c_fc.weight.contiguous(), mlp.c_fc.bias, mlp.c_proj.weight.contiguous(), mlp.c_proj.bias,
            act, block.ln_1.eps, float(attn.scaling),
        )  # fmt: skip


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class GPT2Forward:
    """`CachedForward` for a Hugging Face `GPT2LMHeadModel` (no cross-attention), put in eval mode."""

    def __init__(self, model: GPT2LMHeadModel) -> None:
        if not isinstance(model, GPT2LMHeadModel):
            raise TypeError("GPT2Forward runs GPT2LMHeadModel only (it walks its modules directly)")
        if model.config.add_cross_attention:
            raise ValueError("GPT-2 with cross-attention is not supported")
        self._model = model.eval()  # dropout off: the engine owns inference
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = model.config
        self.n_layer: int = cfg.n_layer
        self.n_head: int = cfg.n_head
        self.head_dim: int = cfg.n_embd // cfg.n_head
        self.context: int = cfg.n_positions
        self.vocab: int = model.lm_head.out_features
        self._layers = [_Layer.of(cast(GPT2Block, block), cfg.activation_function) for block in model.transformer.h]
        tr = model.transformer
        self._wte, self._wpe = tr.wte.weight, tr.wpe.weight
        self._ln_f = (tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)
        self._head = model.lm_head.weight

    def attention_scale(self, layer: int) -> float:
        return self._layers[layer].scale

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        attend: Attend,
        last: torch.Tensor | None = None,
        every: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [b, vocab] at each row's position `last` (default: the final one) of `ids` [b, s]; and for the
        rows `every` (prompts being scored), logits [len(every), s, vocab] at every position, else None."""
        b, s = ids.shape
        width = self.n_head * self.head_dim
        x = (F.embedding(ids, self._wte) + F.embedding(positions, self._wpe)).view(b * s, width)
        for i, w in enumerate(self._layers):
            h = F.layer_norm(x, (width,), w.ln_1_weight, w.ln_1_bias, w.eps)
            y = attend(i, torch.addmm(w.attn_bias, h, w.attn_weight).view(b, s, 3 * width))
            x = torch.addmm(w.proj_bias, y, w.proj_weight).add_(x)
            h = F.layer_norm(x, (width,), w.ln_2_weight, w.ln_2_bias, w.eps)
            h = w.act(torch.addmm(w.fc_bias, h, w.fc_weight))
            x = torch.addmm(w.out_bias, h, w.out_weight).add_(x)
        x = x.view(b, s, width)
        full = None if every is None else self._logits(x.index_select(0, every))
        if last is not None:
            x = x[torch.arange(b, device=self.device), last]
        else:
            x = x.view(b, width) if s == 1 else x[:, -1]
        return self._logits(x), full

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head on hidden states [..., width]: logits [..., vocab]."""
        weight, bias, eps = self._ln_f
        x = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
        # The tied [vocab, width] weight as the module uses it: a transposed copy changes the logits' rounding.
        return F.linear(x, self._head)


def cached_forward(model: torch.nn.Module) -> CachedForward:
    """The engine's forward for `model`'s architecture."""
    if isinstance(model, GPT2LMHeadModel):
        return GPT2Forward(model)
    raise TypeError(f"no cached forward for {type(model).__name__}; the engine serves GPT2LMHeadModel")
