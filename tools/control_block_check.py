"""Why a run's control-block readout differs from the base's (not a test; prints three lines).

The study's control readout (block 7, inside the frozen trunk) passes, like every readout, through the
model's final LayerNorm. For an exported adapter file this compares, on a few CamVid val frames, the block's
readout of the adapted model with the base's: as it is, and with the base's final norm put back. An adapter
or LoRA file gives "equal" twice; a full fine-tuning file, which trains the final norm, differs first and is
equal second.

    python tools/control_block_check.py RUN_DIR/adapter.safetensors --block 7 --images 4
"""

from __future__ import annotations

import argparse

import torch

from glare_core.data import build_dataset
from glare_core.evaluation import load_backbone
from glare_core.features import _forward_features, unit_image
from glare_core.teacher import apply_adapter, read_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="an exported adapter file (adapter.safetensors of a run)")
    parser.add_argument("--block", type=int, default=7, help="the control block (the study's: 7)")
    parser.add_argument("--images", type=int, default=4, help="CamVid val frames to compare")
    args = parser.parse_args()

    base_name = read_adapter(args.adapter)[1].get("base", "dinov2_vits14_imgfocus")
    base = load_backbone(base_name).eval()
    adapted = apply_adapter(load_backbone(base_name), args.adapter)
    ds = build_dataset("camvid", split="val", labels=False, limit=args.images, size=(224, 224))
    x = torch.stack([unit_image(ds[i]["image"]) for i in range(len(ds))])
    layers = [args.block]

    def compare(what: str) -> None:
        with torch.no_grad():
            a, b = _forward_features(adapted, x, layers), _forward_features(base, x, layers)
        same = "equal bit for bit" if torch.equal(a, b) else f"differ (max |diff| {(a - b).abs().max():.2e})"
        print(f"block {args.block} readout, {what}: {same}")

    moved = max(
        (p - q).abs().max().item() for p, q in zip(adapted.vit.norm.parameters(), base.vit.norm.parameters())
    )
    print(f"{args.adapter}: {len(x)} CamVid val frames; the final norm moved by at most {moved:.2e}")
    compare("as exported")
    adapted.vit.norm.load_state_dict(base.vit.norm.state_dict())
    compare("with the base's final norm")


if __name__ == "__main__":
    main()
