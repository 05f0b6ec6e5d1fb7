"""What a GPT-2 looks at: every layer's and head's attention weights, and every layer's hidden states, in one pass.

The weights are recomputed from each block's input (its layer norm, then the query and key projections), so the
model runs with whatever attention kernel it was loaded with (SDPA returns no weights) and one forward pass serves
both the attention maps and the per-layer states. tests/server/test_inside.py checks them against transformers' own
`output_attentions=True` with eager attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block


@dataclass(frozen=True)
class Inside:
    """One forward pass of a batch of prompts, right-padded.

    attentions: [layer, batch, head, query, key], causal (zero above the diagonal), rows summing to 1.
    states: [layer + 1, batch, position, width]: the embeddings, then each block's output (the residual stream).
    """

    attentions: torch.Tensor
    states: torch.Tensor


def right_pad(prompts: list[list[int]], pad_id: int) -> torch.Tensor:
    """Prompts as one [batch, longest] tensor, padded on the right.

    No attention mask is needed: attention is causal, so a token never sees the padding after it.
    """
    width = max(len(p) for p in prompts)
    out = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(prompts):
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


@torch.inference_mode()
def look_inside(model: GPT2LMHeadModel, input_ids: torch.Tensor) -> Inside:
    """Attention weights and hidden states of `input_ids` [batch, length] (on the model's device)."""
    config = model.config
    residual: list[torch.Tensor] = []
    hook = model.transformer.ln_f.register_forward_pre_hook(lambda _module, args: residual.append(args[0]))
    try:
        out = model.transformer(input_ids=input_ids, output_hidden_states=True)
    finally:
        hook.remove()
    hidden = out.hidden_states  # the input of each block, then the last block's output after the final norm
    assert hidden is not None
    n_layer, n_head, width = int(config.n_layer), int(config.n_head), int(config.n_embd)
    head_dim = width // n_head
    length = input_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    maps = []
    for layer, block in enumerate(model.transformer.h):
        assert isinstance(block, GPT2Block)
        x = block.ln_1(hidden[layer])
        q, k, _ = block.attn.c_attn(x).split(width, dim=-1)
        q = q.view(*q.shape[:2], n_head, head_dim).transpose(1, 2).float()
        k = k.view(*k.shape[:2], n_head, head_dim).transpose(1, 2).float()
        scores = q @ k.transpose(-1, -2)
        # GPT-2's two optional scalings of the scores, as its config says.
        if config.scale_attn_weights:
            scores = scores / math.sqrt(head_dim)
        if config.scale_attn_by_inverse_layer_idx:
            scores = scores / float(layer + 1)
        maps.append(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))
    # hidden[-1] has the final layer norm applied; the residual stream before it is taken from ln_f's input, so
    # that every state is in the same space.
    return Inside(attentions=torch.stack(maps), states=torch.stack([*hidden[:n_layer], residual[0]]).float())
