"""Train the tokenizer and the small GPT on Shakespeare, then write the shipped folder (`python -m model.train_gpt`).

Muon for the blocks' matrices and AdamW for the rest (or AdamW alone), warm-up then warmup-stable-decay (or cosine),
gradient clipping, a fixed seed, periodic held-out evaluation, a resumable checkpoint, and a step or wall-time budget.
With `--max-steps` the run is deterministic for its seed; with `--minutes` the schedule follows wall time, so a run on
a shared, noisy machine still ends on time with a fully decayed learning rate (its step count then depends on the
machine's speed and is written to the model card). What was tried and measured: docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from model.corpus import load_works
from model.gpt import (
    GPT_DIR,
    bits_per_char,
    count_parameters,
    eot_id,
    eval_stream,
    gpt_config,
    held_out_nats,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from model.muon import Muon
from model.training_report import plot_curves, samples, write_card


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=GPT_DIR, help="folder to write the shipped model into")
    p.add_argument("--run-dir", type=Path, default=Path("runs/gpt"), help="checkpoint and logs")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/ckpt.pt")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--optimizer", choices=["muon", "adamw"], default="muon", help="for the blocks' matrices")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW's (embeddings, gains; everything with adamw)")
    p.add_argument("--muon-lr", type=float, default=4e-3, help="Muon's, scaled to AdamW's update size")
    p.add_argument("--schedule", choices=["wsd", "cosine"], default="wsd")
    p.add_argument("--cooldown", type=float, default=0.3, help="wsd: the last fraction of the budget, decayed to 0")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine: the floor, a fraction of lr")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None, help="step budget (overrides --minutes)")
    p.add_argument("--minutes", type=float, default=57.0, help="wall-time budget when --max-steps is not given")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument(
        "--baseline",
        type=Path,
        default=GPT_DIR / "training.json",
        help="training.json of the model this run replaces, drawn on the loss curve (read before OUT is replaced)",
    )
    return p.parse_args(argv)


def lr_factor(step: int, progress: float, args: argparse.Namespace) -> float:
    """The multiplier of every group's learning rate: linear warm-up over the first steps, then over `progress`
    (0..1 of the budget) either warmup-stable-decay (flat, then linear to 0 over the last `cooldown`) or a cosine
    decay to `min_lr_ratio`."""
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = min(1.0, progress)
    if args.schedule == "wsd":
        return min(1.0, (1.0 - progress) / args.cooldown)
    floor = args.min_lr_ratio
    return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))


def build_optimizers(model: GPT2LMHeadModel, args: argparse.Namespace) -> list[torch.optim.Optimizer]:
    """Muon for the transformer blocks' matrices, AdamW for the rest (embeddings, norms' gains, biases), as the
    fastest small-GPT recipes split them; or AdamW for everything."""
    named = list(model.named_parameters())  # the tied lm_head appears once, as the token embedding
    hidden = [p for n, p in named if p.dim() == 2 and ".h." in n]
    other_matrices = [p for n, p in named if p.dim() == 2 and ".h." not in n]
    vectors = [p for n, p in named if p.dim() < 2]
    adamw_groups: list[dict[str, Any]] = [
        {"params": other_matrices, "weight_decay": args.weight_decay, "base_lr": args.lr},
        {"params": vectors, "weight_decay": 0.0, "base_lr": args.lr},
    ]
    optims: list[torch.optim.Optimizer] = []
    if args.optimizer == "muon":
        muon_groups = [{"params": hidden, "weight_decay": args.weight_decay, "base_lr": args.muon_lr}]
        optims.append(Muon(muon_groups, lr=args.muon_lr))
    else:
        adamw_groups.insert(0, {"params": hidden, "weight_decay": args.weight_decay, "base_lr": args.lr})
    optims.append(torch.optim.AdamW(adamw_groups, lr=args.lr, betas=(0.9, 0.95)))
    return optims


def encode_training_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    eot = eot_id(tokenizer)
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def get_batch(stream: torch.Tensor, ctx: int, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(stream) - ctx - 1, (batch,), generator=gen)
    x = torch.stack([stream[s : s + ctx] for s in starts])
    y = torch.stack([stream[s + 1 : s + ctx + 1] for s in starts])
    return x, y


def evaluate(model: GPT2LMHeadModel, stream: torch.Tensor, chars: int) -> dict[str, float]:
    model.eval()
    nats, count = held_out_nats(model, stream)
    model.train()
    return {"nats_per_token": nats / count, "bits_per_char": bits_per_char(nats, chars)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.run_dir / "ckpt.pt"
    tok_dir = args.run_dir / "tokenizer"

    works = load_works()
    train_texts = [w.train for w in works]
    held_texts = [w.held_out for w in works]
    if args.resume and (tok_dir / "tokenizer.json").exists():
        tokenizer = load_tokenizer(tok_dir)
    else:
        t0 = time.time()
        tokenizer = train_tokenizer(train_texts, vocab_size=args.vocab_size)
        save_tokenizer(tokenizer, tok_dir)
        print(f"tokenizer: {len(tokenizer)} tokens in {time.time() - t0:.1f}s")
    train_stream = encode_training_stream(tokenizer, train_texts)
    held_stream, held_chars = eval_stream(tokenizer, held_texts)
    print(f"training tokens {len(train_stream):,}; held-out tokens {len(held_stream):,}, chars {held_chars:,}")

    config = gpt_config(len(tokenizer), args.n_layer, args.n_head, args.n_embd, args.context)
    model = GPT2LMHeadModel(config)
    model.train()
    optims = build_optimizers(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    # `elapsed` counts training steps only; `wall` counts everything, evaluations included (the budget).
    step, elapsed, wall_before, max_steps = 0, 0.0, 0.0, args.max_steps
    history: dict[str, list[Any]] = {
        "train_tokens": [],
        "train_loss": [],
        "eval_tokens": [],
        "eval_loss": [],
        "eval_bpc": [],
    }
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        for optim, state in zip(optims, ck["optim"], strict=True):
            optim.load_state_dict(state)
        gen.set_state(ck["gen"])
        step, elapsed, max_steps, history = ck["step"], ck["elapsed"], ck["max_steps"], ck["history"]
        wall_before = ck["wall"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min)")

    def save_checkpoint() -> None:
        torch.save(
            {
                "model": model.state_dict(),
                "optim": [optim.state_dict() for optim in optims],
                "gen": gen.get_state(),
                "step": step,
                "elapsed": elapsed,
                "wall": wall_before + time.time() - wall_start,
                "max_steps": max_steps,
                "history": history,
            },
            ckpt_path,
        )

    tokens_per_step = args.batch_size * args.context
    wall_start = time.time()
    print(f"model: {count_parameters(model):,} parameters")
    budget_s = args.minutes * 60

    def progress() -> float:
        if max_steps is not None:
            return step / max_steps
        return (wall_before + time.time() - wall_start) / budget_s

    bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    while progress() < 1.0:
        t0 = time.perf_counter()
        factor = lr_factor(step, progress(), args)
        for optim in optims:
            for group in optim.param_groups:
                group["lr"] = group["base_lr"] * factor
        x, y = get_batch(train_stream, args.context, args.batch_size, gen)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        for optim in optims:
            optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        for optim in optims:
            optim.step()
        dt = time.perf_counter() - t0
        elapsed += dt
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{factor:.2f}x", tok_s=f"{tokens_per_step / dt:,.0f}")
        if step % 10 == 0:
            history["train_tokens"].append(step * tokens_per_step)
            history["train_loss"].append(loss.item())
        if step % args.eval_every == 0 or progress() >= 1.0:
            ev = evaluate(model, held_stream, held_chars)
            history["eval_tokens"].append(step * tokens_per_step)
            history["eval_loss"].append(ev["nats_per_token"])
            history["eval_bpc"].append(ev["bits_per_char"])
            tqdm.write(
                f"step {step}: held-out {ev['nats_per_token']:.4f} nats/token, {ev['bits_per_char']:.4f} bpc,"
                f" {elapsed / 60:.1f} min"
            )
            save_checkpoint()
    bar.close()
    save_checkpoint()

    # Write the shipped folder.
    model.eval()
    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else None
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    model.save_pretrained(args.out)
    save_tokenizer(tokenizer, args.out)
    ev = evaluate(model, held_stream, held_chars)
    plot_curves(history, args.out / "loss_curve.png", baseline)
    info = {
        "vocab_size": len(tokenizer),
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "n_embd": args.n_embd,
        "context": args.context,
        "parameters": count_parameters(model),
        "optimizer": args.optimizer,
        "lr": args.lr,
        "muon_lr": args.muon_lr,
        "schedule": args.schedule,
        "cooldown": args.cooldown,
        "min_lr_ratio": args.min_lr_ratio,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "steps": step,
        "tokens_seen": step * tokens_per_step,
        "epochs": step * tokens_per_step / len(train_stream),
        "wall_minutes": (wall_before + time.time() - wall_start) / 60,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch"
        f" {torch.__version__}",
        "train_chars": sum(len(t) for t in train_texts),
        "held_out_chars": held_chars,
        "held_out_tokens": len(held_stream),
        "chars_per_token": held_chars / len(held_stream),
        "held_out_nats_per_token": ev["nats_per_token"],
        "held_out_bits_per_char": ev["bits_per_char"],
    }
    (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    write_card(args.out, info, samples(model, tokenizer), baseline)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
