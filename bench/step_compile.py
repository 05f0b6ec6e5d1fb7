"""A static-shape batch-1 decode step of the shipped GPT, eager against torch.compile (inductor with its Python
wrapper, and with `cpp_wrapper`, which drops the Python between kernels), and the step's matrix products alone, its
floor on this machine (`python -m bench.step_compile`). One torch thread, greedy tokens checked identical, medians
of interleaved repeats. A report for issue 23, never a test; the figures: docs/performance-single-stream.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from model.gpt import GPT_DIR

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_step(model: GPT2LMHeadModel, bucket: int) -> Step:
    """One greedy decode step at batch 1 over a static cache [layer, head, bucket, head_dim]: the next token."""
    cfg = model.config
    width, heads = cfg.n_embd, cfg.n_head
    t: Any = model.transformer  # Hugging Face's modules, untyped
    blocks = [
        (b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight, b.attn.c_proj.bias,
         b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias, b.mlp.c_proj.weight, b.mlp.c_proj.bias)
        for b in t.h
    ]  # fmt: skip
    wte, wpe, lnf_w, lnf_b = t.wte.weight, t.wpe.weight, t.ln_f.weight, t.ln_f.bias
    eps = cfg.layer_norm_epsilon

    def step(tok: torch.Tensor, pos: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        x = wte[tok] + wpe[pos]
        mask = (torch.arange(bucket) <= pos).view(1, 1, bucket)  # the padded bucket: attend up to `pos`
        for i, (l1w, l1b, aw, ab, pw, pb, l2w, l2b, fw, fb, ow, ob) in enumerate(blocks):
            h = F.layer_norm(x, (width,), l1w, l1b, eps)
            q, k, v = torch.addmm(ab, h, aw).view(3, heads, -1).unbind(0)
            kc[i].index_copy_(1, pos, k.unsqueeze(1))
            vc[i].index_copy_(1, pos, v.unsqueeze(1))
            a = F.scaled_dot_product_attention(q.unsqueeze(1), kc[i], vc[i], attn_mask=mask)
            x = x + torch.addmm(pb, a.reshape(1, width), pw)
            h = F.layer_norm(x, (width,), l2w, l2b, eps)
            x = x + torch.addmm(ob, F.gelu(torch.addmm(fb, h, fw), approximate="tanh"), ow)
        return F.linear(F.layer_norm(x, (width,), lnf_w, lnf_b, eps), wte).argmax(-1)

    return step


def timed(step: Step, shape: tuple[int, int, int, int], steps: int) -> tuple[float, list[int]]:
    """Milliseconds a step over `steps` greedy steps from token 5, and the tokens."""
    kc, vc = torch.zeros(shape), torch.zeros(shape)
    tok, out = torch.tensor([5]), []
    start = time.perf_counter()
    for p in range(steps):
        tok = step(tok, torch.tensor([p]), kc, vc)
        out.append(int(tok))
    return (time.perf_counter() - start) / steps * 1e3, out


def matmuls_ms(model: GPT2LMHeadModel, steps: int) -> float:
    """Milliseconds a step of the step's matrix products alone (16 and the head), eager."""
    x = torch.randn(1, model.config.n_embd)
    t: Any = model.transformer
    start = time.perf_counter()
    for _ in range(steps):
        for b in t.h:
            torch.addmm(b.attn.c_attn.bias, x, b.attn.c_attn.weight)
            torch.addmm(b.attn.c_proj.bias, x, b.attn.c_proj.weight)
            torch.addmm(b.mlp.c_proj.bias, torch.addmm(b.mlp.c_fc.bias, x, b.mlp.c_fc.weight), b.mlp.c_proj.weight)
        F.linear(x, t.wte.weight)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=48, help="decode steps a repeat (at most --bucket)")
    parser.add_argument("--bucket", type=int, default=64, help="the static attended length")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = GPT2LMHeadModel.from_pretrained(GPT_DIR).eval()
    cfg = model.config
    shape = (cfg.n_layer, cfg.n_head, args.bucket, cfg.n_embd // cfg.n_head)
    with torch.inference_mode():
        step = make_step(model, args.bucket)
        steps: dict[str, Step] = {"eager": step}
        for name, cpp_wrapper in (("inductor", False), ("inductor cpp_wrapper", True)):
            torch._dynamo.reset()
            inductor_config.cpp_wrapper = cpp_wrapper
            compiled = torch.compile(step, dynamic=False, fullgraph=True)
            start = time.perf_counter()
            timed(compiled, shape, 2)
            print(f"{name}: compiled and warmed in {time.perf_counter() - start:.1f} s (a rerun finds it on disk)")
            steps[name] = compiled
        ms: dict[str, list[float]] = {name: [] for name in steps}
        tokens: dict[str, list[int]] = {}
        for _ in range(args.repeats):
            for name, fn in steps.items():
                t, tokens[name] = timed(fn, shape, args.steps)
                ms[name].append(t)
        floor = statistics.median(matmuls_ms(model, args.steps) for _ in range(args.repeats))
    print(f"\nbatch 1, one thread, bucket {args.bucket}, medians of {args.repeats} interleaved repeats")
    print(f"{'step':<22}{'ms a step':>10}{'vs eager':>10}  tokens as eager")
    for name, times in ms.items():
        ratio = statistics.median(a / b for a, b in zip(times, ms["eager"], strict=True))
        print(f"{name:<22}{statistics.median(times):>10.3f}{ratio:>9.2f}x  {tokens[name] == tokens['eager']}")
    print(f"{'matrix products alone':<22}{floor:>10.3f}{floor / statistics.median(ms['eager']):>9.2f}x")


if __name__ == "__main__":
    main()
