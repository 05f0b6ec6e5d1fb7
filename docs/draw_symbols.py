"""Draw the four pixel symbols into docs/symbols.png: python docs/draw_symbols.py."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from model.pixels import SYMBOLS, symbol_tensor  # noqa: E402


def main() -> None:
    fig, axes = plt.subplots(1, len(SYMBOLS), figsize=(2.0 * len(SYMBOLS), 2.8))
    for ax, name in zip(axes, SYMBOLS, strict=True):
        # Flip rows so that row 0 (the top row of the display) is drawn at the top.
        pixels = symbol_tensor(name).reshape(3, 3).flip(0).numpy()
        ax.pcolormesh(pixels, cmap="gray", vmin=-1, vmax=1, edgecolors="#888", linewidth=2)
        ax.set_title(name, fontsize=14)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.text(0.5, 0.03, "white = 1 (lit), black = -1", ha="center", fontsize=10)
    out = Path(__file__).resolve().parent / "symbols.png"
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
