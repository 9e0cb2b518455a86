"""glare_core.diagrams: the boxes and arrows of the book's schematic figures (chapters 0 and 4)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from glare_core.diagrams import FROZEN, TRAINED, Diagram  # noqa: E402


def test_boxes_and_arrows_land_where_asked_with_the_diagram_style():
    d = Diagram(figsize=(4, 2), xlim=(0, 10), ylim=(0, 4), box_size=(2.0, 0.5), pad=0.04, ink="0.25", head=12)
    d.box((3, 2), "LN", FROZEN)
    d.box((7, 2), "adapter", TRAINED, w=3.0, fontsize=7)
    d.arrow((4, 2), (5.5, 2), ls="--")
    first, second, arrow = d.ax.patches
    assert (first.get_x(), first.get_y(), first.get_width(), first.get_height()) == (2.0, 1.75, 2.0, 0.5)
    assert second.get_width() == 3.0 and first.get_facecolor() == to_rgba(FROZEN)
    assert first.get_edgecolor() == to_rgba("0.25") and arrow.get_mutation_scale() == 12
    assert arrow.get_linestyle() == "--"
    texts = {t.get_text(): t.get_fontsize() for t in d.ax.texts}
    assert texts == {"LN": 9, "adapter": 7}
    assert not d.ax.axison and d.ax.get_xlim() == (0, 10)
    plt.close(d.fig)
