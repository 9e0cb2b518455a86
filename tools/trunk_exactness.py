"""How far the cached-trunk step is from the full-depth step on the real base (not a test; prints a table).

For a few CamVid training images, the GLARE objective of the ``cpu`` preset (224 px views) is computed once
from the images (full depth) and once from the same views' trunk tokens (``glare_core.trunk``), stored in
float32, fp16 and bf16, with the same random generator for views, patch corruption and regions. Adapters are
randomised (student and teacher differently) so the tail's adapters matter. Prints, per trunk depth and
storage dtype, the relative difference of each loss term and the largest relative difference of a gradient
tensor.

    python tools/trunk_exactness.py --blocks 6 8 10 --images 4
"""

from __future__ import annotations

import argparse

import torch

from glare_core.config import preset
from glare_core.data import build_dataset
from glare_core.objective import GlareObjective
from glare_core.teacher import StudentTeacher
from glare_core.trunk import TrunkBatch
from glare_core.weights import load_base_with_head


def run(n: int, images: torch.Tensor, storage: torch.dtype | None, cfg) -> tuple[dict, dict]:
    torch.manual_seed(0)
    cfg.trunk_blocks = n
    backbone, head = load_base_with_head(cfg.base, verbose=False)
    model = StudentTeacher(backbone, cfg.student_teacher_config(), head_state_dict=head)
    with torch.no_grad():  # adapters away from zero, the teacher not equal to the student
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
        model.update_teacher(0.5)
    objective = GlareObjective(cfg.objective)
    g = torch.Generator().manual_seed(1)
    if storage is None:
        loss, logs = objective(model, images, step=100, generator=g)
    else:
        views, Xs, masks, _ = objective.prepare_views(images, model.patch_size, g)
        with torch.no_grad():
            clean = [model.student.trunk(x, n)[0].to(storage).float() for x in views.globals]
            corrupted = [model.student.trunk(x, n)[0].to(storage).float() for x in Xs]
        side = views.globals[0].shape[-1] // model.patch_size
        batch = TrunkBatch(clean, corrupted, masks, views.boxes, views.flips, (side, side), n)
        loss, logs = objective(model, batch, step=100, generator=g)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logs, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[6, 8, 10])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    cfg = preset("cpu")
    cfg.objective.views.global_size = 224
    ds = build_dataset("camvid", labels=False)
    step = max(1, len(ds) // a.images)
    pick = [ds[i]["image"] for i in range(0, step * a.images, step)]
    images = torch.stack(
        [torch.nn.functional.interpolate(x[None].float() / 255, size=(256, 256))[0] for x in pick]
    )
    print(f"{a.images} CamVid train images, base {cfg.base}, 224 px views, float32 compute")
    print(
        "n   storage  "
        + "  ".join(f"{k:>13}" for k in ("loss_global", "loss_local", "loss_regional"))
        + "  max grad"
    )
    for n in a.blocks:
        logs, grads = run(n, images, None, cfg)
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            logs_c, grads_c = run(n, images, dtype, cfg)
            terms = [
                abs(logs_c[k] - logs[k]) / abs(logs[k])
                for k in ("loss_global", "loss_local", "loss_regional")
            ]
            g = max(float((grads[k] - grads_c[k]).norm() / grads[k].norm().clamp_min(1e-30)) for k in grads)
            print(f"{n:<3} {name:<8} " + "  ".join(f"{t:13.2e}" for t in terms) + f"  {g:.2e}", flush=True)


if __name__ == "__main__":
    main()
