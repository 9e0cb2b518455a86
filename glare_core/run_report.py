"""What a pre-training run reports: ``metrics.jsonl`` (one line per step), the console, ``summary.json``.

:func:`glare_core.train.pretrain` appends each step's record with :func:`append_jsonl` (a resumed run first
drops the lines written after its checkpoint, :func:`truncate_metrics`), shows progress with a tqdm bar in a
terminal or a printed line every ``log_every`` steps, and ends with :func:`summarize`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader

from .paths import smoke_mode
from .tuning import count_parameters

if TYPE_CHECKING:
    from .train import LoopResult, Run


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines after ``last_step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def last_loss(metrics_path: Path) -> float | None:
    """The loss of the last line of ``metrics.jsonl`` (None when it has none)."""
    lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
    return json.loads(lines[-1])["loss"] if lines else None


def progress_bar(info: Any, start_step: int, total: int) -> Any:
    """A tqdm bar on rank 0 in a terminal (not in smoke mode), else None (printed lines instead)."""
    if not (info.is_main and sys.stdout.isatty() and not smoke_mode()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start_step, desc="pretrain", dynamic_ncols=True)


def show_progress(record: dict[str, Any], bar: Any, total: int, log_every: int, first: bool) -> None:
    """Advance the bar, or print a line every ``log_every`` steps and at the first step of this process."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", ips=f"{record['images_per_s']:.1f}")
    elif record["step"] % max(1, log_every) == 0 or first:
        print(
            f"step {record['step']}/{total} loss {record['loss']:.4f} lr {record['lr']:.2e} "
            f"{record['images_per_s']:.1f} img/s",
            flush=True,
        )


def summarize(
    run: Run,
    loop: LoopResult,
    num_images: int,
    start_step: int,
    trunk: dict[str, Any] | None,
    data_root: str | None,
    metrics_path: Path,
) -> dict[str, Any]:
    """What ``summary.json`` records: length, speed, final losses, parameter counts, precision, machine."""
    model, info = run.model, run.info
    counts = count_parameters(model.student)
    minutes = loop.seconds / 60
    return {
        "preset": run.cfg.preset,
        "steps": run.total_steps,
        "start_step": start_step,
        "images": num_images,
        "minutes": minutes,
        "images_per_s": loop.images / max(minutes * 60, 1e-9),
        "final_loss": last_loss(metrics_path) if info.is_main else None,
        "final_terms": {k: v for k, v in loop.last.items() if k.startswith(("loss_", "teacher_"))},
        "train_heads": model.train_heads,
        "trainable_params": counts.trainable,
        "total_params": counts.total,
        "precision": run.precision.name,
        "precision_requested": run.precision.requested,
        "precision_reason": run.precision.reason,
        "ema_dtype": model.ema_dtype(),
        "ln_k": math.log(model.out_dim),  # the value of a cross-entropy between uniform distributions
        "telemetry": loop.telemetry,
        "attention": run.attention,
        "device": str(run.device),
        "world_size": info.world_size,
        "data_root": data_root,
        "trunk": trunk,
    }


def data_root(loader: DataLoader) -> str | None:
    """The dataset folder the run read (recorded in ``summary.json``), or None for generated data."""
    root = getattr(loader.dataset.dataset, "root", None)
    return str(Path(root).resolve()) if root is not None else None
