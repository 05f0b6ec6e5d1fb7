"""The engine's prefix cache: keys and values of sequences kept in rows of their own after they are computed, found
again by the tokens they hold (blocks hashed with their prefix, as vLLM does), evicted least recently used first.

Why rows and not blocks or a radix tree, with the figures: docs/architecture-engine.md.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

# Tokens a hash covers: a prefix shorter than one block is never worth a lookup (vLLM's block size too).
BLOCK = 16


@dataclass
class _Entry:
    tokens: list[int]
    hashes: list[int] = field(default_factory=list)  # hash of each whole block, chained with the blocks before it


def _block_hashes(tokens: list[int]) -> list[int]:
    """The hash of each whole block of `tokens`, chained with the hashes before it (one per prefix)."""
    out: list[int] = []
    prev: int | None = None
    for b in range(len(tokens) // BLOCK):
        prev = hash((prev, tuple(tokens[b * BLOCK : (b + 1) * BLOCK])))
        out.append(prev)
    return out


def _common_length(a: list[int], b: list[int], known: int) -> int:
    """How many leading tokens `a` and `b` share, given that it is at least `known` unless a hash collided."""
    if a[:known] != b[:known]:
        known = 0
    n = min(len(a), len(b))
    while known < n and a[known] == b[known]:
        known += 1
    return known


class PrefixCache:
    """`rows` rows of keys and values ([layer, key/value, row, head, position, head_dim], like the engine's)."""

    def __init__(self, rows: int, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> None:
        """`shape`: (layers, heads, context, head_dim) of the engine's cache."""
        layers, heads, context, dim = shape
        self.rows = rows
        self.kv = torch.zeros((layers, 2, rows, heads, context, dim), dtype=dtype, device=device)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # row -> entry, least recently used first
        self._index: dict[int, dict[int, None]] = {}  # block hash -> rows holding that prefix (an ordered set)

    @property
    def used(self) -> int:
        return len(self._entries)

    def match(self, tokens: list[int]) -> tuple[int, int]:
        """(row, n): the cached row sharing the longest prefix with `tokens`, and that prefix's length (0: none)."""
        candidates: dict[int, None] = {}
        depth = 0
        for h in _block_hashes(tokens):
            rows = self._index.get(h)
            if not rows:
                break
            candidates, depth = rows, depth + BLOCK
        best, best_n = -1, 0
        for row in candidates:
            n = _common_length(self._entries[row].tokens, tokens, depth)
            if n > best_n:
                best, best_n = row, n
        if best >= 0:
            self._entries.move_to_end(best)
        return best, best_n

    def load(self, row: int, n: int, dst: torch.Tensor) -> None:
        """Copy the first `n` positions of cached `row` into the engine row `dst` [layer, key/value, head, pos, dim]."""
        dst[:, :, :, :n] = self.kv[:, :, row, :, :n]

    def store(self, tokens: list[int], src: torch.Tensor) -> None:
        """Keep the keys and values of `tokens` (positions 0..len-1 of the engine row `src`), unless already kept.

        An entry that `tokens` extends is extended in place (a conversation's next turn replaces its last)."""
        if len(tokens) < BLOCK:
            return
        row, n = self.match(tokens)
        if n == len(tokens):
            return  # every token is cached already
        if row >= 0 and n == len(self._entries[row].tokens):
            self._unindex(row)
            start = n
        else:
            row, start = self._free_row(), 0
        # Only what this row lacks; a row read by a load() earlier in the step was copied out before this write.
        self.kv[:, :, row, :, start : len(tokens)] = src[:, :, :, start : len(tokens)]
        entry = _Entry(list(tokens), _block_hashes(tokens))
        self._entries[row] = entry
        self._entries.move_to_end(row)
        for h in entry.hashes:
            self._index.setdefault(h, {})[row] = None

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()

    def _free_row(self) -> int:
        if len(self._entries) < self.rows:
            taken = set(self._entries)
            return next(r for r in range(self.rows) if r not in taken)
        row = next(iter(self._entries))  # the least recently used
        self._unindex(row)
        return row

    def _unindex(self, row: int) -> None:
        entry = self._entries.pop(row)
        for h in entry.hashes:
            rows = self._index[h]
            rows.pop(row, None)
            if not rows:
                del self._index[h]
