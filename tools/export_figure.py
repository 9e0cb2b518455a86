"""Copy a figure out of a committed notebook's outputs into a PNG file (the README's figure comes from here).

Usage: python tools/export_figure.py book/ssl_vits.ipynb 1 book/_static/readme_cls_attention.png
(the second argument counts PNG outputs in the notebook from 0).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path


def export(notebook: Path, index: int, out: Path) -> None:
    pngs = [
        o["data"]["image/png"]
        for cell in json.loads(notebook.read_text())["cells"]
        if cell["cell_type"] == "code"
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    if not 0 <= index < len(pngs):
        raise SystemExit(f"{notebook}: has {len(pngs)} PNG outputs, no number {index}")
    out.write_bytes(base64.b64decode(pngs[index]))
    print(f"wrote {out} (PNG output {index} of {notebook})")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    export(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
