"""Words on a plane: the GPT's input embeddings projected to 2-D, their nearest neighbours, and analogies.

The plane is fitted once per model on the whole input-embedding matrix, so a word sits at the same place whatever
else is asked with it. Geometry is cosine geometry throughout: the vectors are unit-normalised before the principal
components are fitted and before anything is projected, so that the neighbours a user reads (cosine) and the
distances they see agree, and so that a hidden state, whose length is some 25 times an embedding's, lands on the same
plane as the embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import torch

# Neighbours and analogy answers are drawn from whole-word tokens (a space, then letters), not from word pieces or
# punctuation, which would crowd the answers out without meaning anything to a reader.
_WORD = re.compile(r"^ [A-Za-z][A-Za-z']*$")


@dataclass(frozen=True)
class Neighbour:
    token_id: int
    cosine: float


@dataclass(frozen=True)
class Plane:
    """The 2-D principal plane of the unit-normalised embeddings, and the vocabulary to find neighbours in."""

    unit: torch.Tensor  # [vocab, width]: every token's embedding, unit length
    mean: torch.Tensor  # [width]
    axes: torch.Tensor  # [2, width]
    words: torch.Tensor  # [vocab] bool: whole-word tokens, the candidates for neighbours

    @classmethod
    def fit(cls, embeddings: torch.Tensor, token_texts: list[str]) -> Plane:
        unit = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=-1)
        mean = unit.mean(dim=0)
        # Full SVD of a vocab x width matrix: milliseconds here, and exact (a randomised PCA would move the plane
        # between fits).
        _, _, vh = torch.linalg.svd(unit - mean, full_matrices=False)
        axes = vh[:2].clone()
        # An axis's sign is arbitrary; fix it (largest loading positive) so that a refit draws the same picture.
        signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
        axes *= signs
        words = torch.tensor([bool(_WORD.match(t)) for t in token_texts], dtype=torch.bool)
        return cls(unit=unit, mean=mean, axes=axes, words=words)

    def word_vector(self, token_ids: list[int]) -> torch.Tensor:
        """A word's embedding: the mean of its tokens' (unit) embeddings, unit length again."""
        return torch.nn.functional.normalize(self.unit[token_ids].mean(dim=0), dim=-1)

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """[n, width] -> [n, 2]: each vector's direction, placed on the plane."""
        unit = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=-1)
        return (unit - self.mean) @ self.axes.T

    def nearest(self, vector: torch.Tensor, k: int, exclude: Collection[int] = ()) -> list[Neighbour]:
        """The `k` whole-word tokens of highest cosine to `vector`, leaving out `exclude`."""
        cosine = self.unit @ torch.nn.functional.normalize(vector.detach().float().cpu(), dim=-1)
        allowed = self.words.clone()
        if exclude:
            allowed[list(exclude)] = False
        cosine = cosine.masked_fill(~allowed, float("-inf"))
        top = cosine.topk(min(k, int(allowed.sum())))
        return [Neighbour(int(i), float(c)) for c, i in zip(top.values, top.indices, strict=True)]

    def analogy(self, a: list[int], b: list[int], c: list[int], k: int) -> tuple[torch.Tensor, list[Neighbour]]:
        """`a - b + c` (puppy - dog + cat) and its nearest words, the three given words left out."""
        target = self.word_vector(a) - self.word_vector(b) + self.word_vector(c)
        return target, self.nearest(target, k, exclude={*a, *b, *c})


def find(sequence: list[int], part: list[int]) -> list[int]:
    """Where `part` occurs in `sequence`: the index of the last token of each occurrence."""
    n = len(part)
    return [i + n - 1 for i in range(len(sequence) - n + 1) if sequence[i : i + n] == part]
