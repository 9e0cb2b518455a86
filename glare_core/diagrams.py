"""Boxes and arrows for the book's schematic figures: chapter 0's training setup, chapter 4's adapter block.

Usage::

    from glare_core.diagrams import FROZEN, TRAINED, Diagram

    d = Diagram(figsize=(9, 4.2), xlim=(-0.5, 12.5), ylim=(-0.3, 4.3))
    d.box((2.0, 3.2), "LN$_1$", FROZEN, w=1.2)
    d.arrow((0.7, 2.0), (5.0, 2.0))
    d.ax.set_title("A ViT block")

Coordinates are data units of the axes (``xlim``, ``ylim``); a box is centred on ``xy``. The colours say what
a part is, the same in every figure: frozen base weights, trained adapters, the EMA teacher, losses, data.
Not part of the GLARE method.
"""

from __future__ import annotations

from typing import Any

#: Frozen base weights (blue-grey), trained parts (yellow), the EMA teacher (green), loss terms (red), data.
FROZEN, TRAINED, EMA, LOSS, DATA = "#dbe4ee", "#f6c85f", "#b9e2c8", "#f4a6a6", "white"


class Diagram:
    """A blank matplotlib figure to draw rounded boxes and arrows on.

    Args:
        figsize: figure size in inches.
        xlim, ylim: the drawing's coordinate ranges.
        box_size: default (width, height) of a box, in data units.
        fontsize: default text size in a box.
        pad: the rounding pad of a box, in data units.
        ink: colour of box edges and arrows.
        lw: line width of arrows.
        head: arrow head size (``mutation_scale``).

    Attributes:
        fig, ax: the figure and its axes (for titles and free text).
    """

    def __init__(
        self,
        figsize: tuple[float, float],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        box_size: tuple[float, float] = (2.4, 0.8),
        fontsize: float = 9,
        pad: float = 0.05,
        ink: str = "0.3",
        lw: float = 1.3,
        head: float = 13,
    ) -> None:
        import matplotlib.pyplot as plt

        self.fig, self.ax = plt.subplots(figsize=figsize)
        self.ax.set_xlim(*xlim)
        self.ax.set_ylim(*ylim)
        self.ax.axis("off")
        self.box_size, self.fontsize, self.pad = box_size, fontsize, pad
        self.ink, self.lw, self.head = ink, lw, head

    def box(
        self,
        xy: tuple[float, float],
        text: str,
        color: str,
        w: float | None = None,
        h: float | None = None,
        fontsize: float | None = None,
    ) -> None:
        """A rounded box of fill ``color`` centred on ``xy`` with ``text`` in its middle."""
        from matplotlib.patches import FancyBboxPatch

        w, h = w or self.box_size[0], h or self.box_size[1]
        x, y = xy
        style = f"round,pad={self.pad}"
        self.ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style, fc=color, ec=self.ink))
        self.ax.text(x, y, text, ha="center", va="center", fontsize=fontsize or self.fontsize)

    def arrow(
        self,
        a: tuple[float, float],
        b: tuple[float, float],
        style: str = "-|>",
        color: str | None = None,
        **kw: Any,
    ) -> None:
        """An arrow from ``a`` to ``b``; ``kw`` goes to ``FancyArrowPatch`` (e.g. ``ls="--"``)."""
        from matplotlib.patches import FancyArrowPatch

        patch = FancyArrowPatch(
            a, b, arrowstyle=style, mutation_scale=self.head, color=color or self.ink, lw=self.lw, **kw
        )
        self.ax.add_patch(patch)
