"""Inputs that OpenAI accepts as text or as token ids: a string, a list of strings, a list of ids, a list of id lists.

Completions' `prompt` and embeddings' `input` both take these shapes; the vocabulary is checked by the endpoint,
which knows it (a 400 naming the index of the first bad id).
"""

from __future__ import annotations

TextOrIds = str | list[str] | list[int] | list[list[int]]


def split_inputs(v: TextOrIds) -> list[str | list[int]]:
    """One item per prompt: a text or a list of token ids."""
    if isinstance(v, str):
        return [v]
    if v and all(isinstance(t, int) for t in v):
        return [[t for t in v if isinstance(t, int)]]  # one prompt of ids (the comprehension narrows the type)
    return [t for t in v if isinstance(t, str | list)]


def check_inputs(
    v: TextOrIds, name: str, max_items: int, max_chars: int, max_ids: int, *, empty_text: bool = True
) -> None:
    """Raise ValueError (a 422 naming `name`) for an input of no item, too many, or one too long; with
    `empty_text` False, for an empty text too."""
    items = split_inputs(v)
    if not items:
        raise ValueError(f"{name} must not be an empty list")
    if len(items) > max_items:
        raise ValueError(f"at most {max_items} {name}s per request")
    for item in items:
        if isinstance(item, str):
            if not item and not empty_text:
                raise ValueError(f"{name} must not be an empty string")
            if len(item) > max_chars:
                raise ValueError(f"a {name} is longer than {max_chars} characters")
        elif not item:
            raise ValueError(f"a {name} of token ids must not be empty")
        elif len(item) > max_ids or any(t < 0 for t in item):
            raise ValueError(f"token ids must be >= 0, at most {max_ids} in a {name}")


def find_out_of_vocabulary(v: TextOrIds, vocab: int, name: str) -> str | None:
    """Where the first token id outside the vocabulary is (`prompt.3`, `input.1.3`), or None."""
    if isinstance(v, str):
        return None
    for i, item in enumerate(v):
        if isinstance(item, int):
            if item >= vocab:
                return f"{name}.{i}"
        elif isinstance(item, list):
            j = next((j for j, t in enumerate(item) if t >= vocab), None)
            if j is not None:
                return f"{name}.{i}.{j}"
    return None
