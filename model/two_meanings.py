"""Which word shows "one word, two meanings" best on this GPT: the measurement behind the attention view's presets.

For each candidate word (ambiguous in Shakespeare) and a sentence for each of its meanings, the model reads both
sentences and we measure, at the word's position:
- how far apart its last-layer states are (1 - cosine: how differently the model holds the word),
- how different its next-token predictions are (Jensen-Shannon divergence, in bits: what the model expects next),
- how much the word attends to the cue that sets its meaning (mean over layers and heads), in each sentence.
The pair with the largest divergence of predictions is the clearest: the model has plainly read two meanings.
Run `python -m model.two_meanings` again after retraining; the README gives the result on the weights it shipped with.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model.attention import look_inside
from model.embedding_map import find
from model.gpt import GPT_DIR, decode, encode, load_gpt, load_tokenizer

# (word, [sentence, cue word] for one meaning, then for the other). The cue is the word that decides the meaning.
CANDIDATES: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("bear", ("Exit, pursued by a bear", "a"), ("I cannot bear it", "cannot")),
    ("grave", ("They laid him in his grave", "laid"), ("you shall find me a grave man", "find")),
    ("will", ("He made his will before he died", "made"), ("I will go with you", "I")),
    ("light", ("What light through yonder window breaks", "What"), ("Her heart is light and merry", "heart")),
    ("lie", ("Here will I lie down and sleep", "Here"), ("Thou dost lie, thou villain", "dost")),
    ("state", ("Something is rotten in the state of Denmark", "rotten"), ("The king sat in state", "sat")),
    ("kind", ("You are too kind, my lord", "too"), ("I know men of this kind", "this")),
    ("arms", ("She held the child in her arms", "held"), ("To arms, to arms, the foe is here", "To")),
    ("mean", ("What do you mean by this", "do"), ("Thou art a mean and base fellow", "a")),
    ("rest", ("The rest is silence", "The"), ("Go to thy bed and rest", "bed")),
    ("watch", ("Set the watch upon the walls", "Set"), ("I will watch thee while thou sleepest", "will")),
    ("bank", ("I know a bank where the wild thyme blows", "know"), ("He laid his gold up in the bank", "gold")),
)


@dataclass(frozen=True)
class Reading:
    sentence: str
    position: int  # of the word's last token
    cue: str
    cue_attention: float  # the word's attention to the cue's last token, mean over layers and heads
    top_next: list[str]


@dataclass(frozen=True)
class Pair:
    word: str
    single_token: bool
    state_distance: float
    prediction_js_bits: float
    readings: tuple[Reading, Reading]


def kl_bits(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p.clamp_min(1e-12) / q.clamp_min(1e-12)).log2()).sum())


def js_bits(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence in bits: 0 for the same prediction, 1 for predictions with nothing in common."""
    m = (p + q) / 2
    return 0.5 * kl_bits(p, m) + 0.5 * kl_bits(q, m)


@torch.inference_mode()
def measure(folder: Path = GPT_DIR) -> list[Pair]:
    model, tok = load_gpt(folder), load_tokenizer(folder)
    pairs = []
    for word, *meanings in CANDIDATES:
        word_ids = encode(tok, " " + word)
        states, probs, readings = [], [], []
        for sentence, cue in meanings:
            ids = encode(tok, sentence)
            position = find(ids, word_ids)[0]
            cue_ids = encode(tok, " " + cue) if find(ids, encode(tok, " " + cue)) else encode(tok, cue)
            cue_position = find(ids, cue_ids)[0]
            inside = look_inside(model, torch.tensor([ids]))
            final = model.transformer.ln_f(inside.states[-1, 0, position])
            p = torch.softmax(model.lm_head(final).float(), dim=-1)
            states.append(final)
            probs.append(p)
            attention = inside.attentions[:, 0, :, position, cue_position].mean()
            top = [decode(tok, [i]) for i in p.topk(3).indices.tolist()]
            readings.append(Reading(sentence, position, cue, round(float(attention), 4), top))
        distance = 1 - float(torch.nn.functional.cosine_similarity(states[0], states[1], dim=0))
        pairs.append(
            Pair(word, len(word_ids) == 1, round(distance, 4), round(js_bits(*probs), 4), (readings[0], readings[1]))
        )
    return sorted(pairs, key=lambda p: (p.single_token, p.prediction_js_bits), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt-dir", type=Path, default=GPT_DIR)
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()
    pairs = measure(args.gpt_dir)
    if args.json:
        print(json.dumps([asdict(p) for p in pairs], indent=2))
        return
    print("| word | one token | JS of next-token predictions (bits) | 1 - cos of last-layer states | cue attention |")
    print("|---|---|---:|---:|---|")
    for p in pairs:
        a, b = p.readings
        cues = f"{a.cue}: {a.cue_attention:.3f}, {b.cue}: {b.cue_attention:.3f}"
        one = "yes" if p.single_token else "no"
        print(f"| {p.word} | {one} | {p.prediction_js_bits:.3f} | {p.state_distance:.3f} | {cues} |")
    best = pairs[0]
    print(f"\nclearest: {best.word!r}")
    for r in best.readings:
        print(f"  {r.sentence!r}: next {r.top_next}")


if __name__ == "__main__":
    main()
