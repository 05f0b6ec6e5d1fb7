"""The GPT-2 forward the engine runs, on the blocks' parameters directly (faster than the HF modules; measured in
docs/architecture-engine.md): keys and values go to the engine's cache through a callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

# attend(layer, q, k, v) stores the keys and values where they belong and returns the attention output;
# q, k and v are [batch, heads, positions, head_dim].
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
    def of(cls, block: GPT2Block) -> _Layer:
        attn, mlp = block.attn, block.mlp
        return cls(
            block.ln_1.weight, block.ln_1.bias, attn.c_attn.weight, attn.c_attn.bias,
            attn.c_proj.weight, attn.c_proj.bias, block.ln_2.weight, block.ln_2.bias,
            mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias,
            mlp.act, block.ln_1.eps, float(attn.scaling),
        )  # fmt: skip


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
        self._layers = [_Layer.of(cast(GPT2Block, block)) for block in model.transformer.h]

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
        tr = self._model.transformer
        b, s = ids.shape
        width = self.n_head * self.head_dim
        x = (tr.wte(ids) + tr.wpe(positions)).view(b * s, width)
        for i, w in enumerate(self._layers):
            h = F.layer_norm(x, (width,), w.ln_1_weight, w.ln_1_bias, w.eps)
            qkv = torch.addmm(w.attn_bias, h, w.attn_weight).view(b, s, 3, self.n_head, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [b, heads, s, head_dim]
            y = attend(i, q, k, v).transpose(1, 2).reshape(b * s, width)
            x = torch.addmm(w.proj_bias, y, w.proj_weight).add_(x)
            h = F.layer_norm(x, (width,), w.ln_2_weight, w.ln_2_bias, w.eps)
            h = w.act(torch.addmm(w.fc_bias, h, w.fc_weight))
            x = torch.addmm(w.out_bias, h, w.out_weight).add_(x)
        x = x.view(b, s, width)
        full = None if every is None else self._model.lm_head(tr.ln_f(x.index_select(0, every)))
        x = x[:, -1] if last is None else x[torch.arange(b, device=self.device), last]
        return self._model.lm_head(tr.ln_f(x)), full


def cached_forward(model: torch.nn.Module) -> CachedForward:
    """The engine's forward for `model`'s architecture."""
    if isinstance(model, GPT2LMHeadModel):
        return GPT2Forward(model)
    raise TypeError(f"no cached forward for {type(model).__name__}; the engine serves GPT2LMHeadModel")
