"""Prompts of an exact token length, cut from one fixed passage of Shakespeare, so that runs are comparable.

Lengths are counted by the server's own tokenizer (`POST /v1/tokenize`) or by the local one in model/weights/gpt (for
servers without that endpoint, and for the raw engine). Windows start at different places in the passage, so the
prompts differ; the passage wraps around when a prompt is longer than it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

# Public domain: Romeo and Juliet II.2, Hamlet III.1, Macbeth V.5, As You Like It II.7.
PASSAGE = """ROMEO.
But soft, what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief,
That thou her maid art far more fair than she.

HAMLET.
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles,
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to.

MACBETH.
To-morrow, and to-morrow, and to-morrow,
Creeps in this petty pace from day to day,
To the last syllable of recorded time;
And all our yesterdays have lighted fools
The way to dusty death. Out, out, brief candle!
Life's but a walking shadow, a poor player,
That struts and frets his hour upon the stage,
And then is heard no more.

JAQUES.
All the world's a stage,
And all the men and women merely players;
They have their exits and their entrances,
And one man in his time plays many parts,
His acts being seven ages.
"""

# A tokenizer as a function: text -> the text of each of its tokens, in order (their concatenation is the text).
TokenTexts = Callable[[str], list[str]]


def server_tokenizer(url: str, api_key: str | None = None, timeout: float = 10.0) -> TokenTexts:
    """Token texts from the server's `POST /v1/tokenize` (tinyserve and vLLM-style servers)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None

    def token_texts(text: str) -> list[str]:
        r = httpx.post(f"{url}/v1/tokenize", json={"prompt": text}, headers=headers, timeout=timeout)
        r.raise_for_status()
        return list(r.json()["token_strs"])

    return token_texts


def local_tokenizer(folder: Path | None = None) -> TokenTexts:
    """Token texts from the tokenizer in model/weights/gpt (imported lazily: transformers is slow to import)."""
    from model.gpt import GPT_DIR, decode, load_tokenizer

    tok = load_tokenizer(folder or GPT_DIR)

    def token_texts(text: str) -> list[str]:
        return [decode(tok, [i]) for i in tok.encode(text, add_special_tokens=False)]

    return token_texts


def build_prompts(token_texts: TokenTexts, n_tokens: int, count: int = 1, passage: str = PASSAGE) -> list[str]:
    """`count` prompts of `n_tokens` tokens each, windows of the passage at evenly spread offsets."""
    if n_tokens < 1 or count < 1:
        raise ValueError("n_tokens and count must be at least 1")
    pieces = token_texts(passage)
    if not pieces:
        raise ValueError("the passage has no tokens")
    stride = max(1, len(pieces) // count)
    return [window(pieces, (i * stride) % len(pieces), n_tokens) for i in range(count)]


def window(pieces: Sequence[str], start: int, n: int) -> str:
    return "".join(pieces[(start + j) % len(pieces)] for j in range(n))
