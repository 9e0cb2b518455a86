"""Helpers for the book's notebooks: one setup call, cached heavy work, and image grids.

Every chapter's first code cell ends with::

    from glare_core.notebook import setup
    env = setup(data=["camvid"])

which runs :func:`glare_core.bootstrap.bootstrap` (in Colab: install this package from the clone, only
the missing light dependencies, never torch, torchvision or numpy; everywhere: find or download the chapter's
data and pick the base model, ``env.base``), picks the device (CUDA, else CPU with a loud warning), reports
smoke mode (``GLARE_SMOKE=1``), seeds every generator and sets matplotlib defaults. Heavy cells go through
:func:`load_or_compute`, which loads a committed result when the full run already produced it and computes
(and saves) it otherwise, following the UvA deep-learning notebooks and fastbook. None of this is part of the
GLARE method.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .bootstrap import bootstrap
from .paths import REPO_ROOT, data_roots, results_dir, smoke_mode
from .rng import seed_everything
from .runs import atomic_write, atomic_write_text, safe_torch_load

if TYPE_CHECKING:  # imported lazily: setup() may first have to install timm (Colab)
    from .backbone import Backbone

CPU_WARNING = """\
!!! Running on the CPU: no GPU was found. !!!
  Forward passes and parameter counts are fine on a CPU, but continual
  pre-training is slow here (chapter 8's cpu preset: minutes per run;
  the experiment tables of chapters 9-11: hours).
  * Colab: Runtime > Change runtime type > T4 GPU, then run again.
  * Locally: GLARE_SMOKE=1 shrinks every run to seconds; the training
    chapters also have a CPU preset (the book's committed outputs come
    from such CPU runs with the offline base)."""


@dataclass(frozen=True)
class Env:
    """What :func:`setup` found.

    Attributes:
        device: ``cuda`` when a GPU is visible, else ``cpu``.
        smoke: True when ``GLARE_SMOKE=1``: every run shrinks so the notebook executes in seconds.
        colab: True inside Google Colab.
        data_dir: the first existing data root (``$GLARE_DATA_DIR``, ``../shared/data``, the user cache),
            or the user cache folder where the Colab download helpers put datasets.
        seed: the seed every generator was set to.
        base: the base model to load, ``load_base(env.base)`` (see :func:`glare_core.bootstrap.pick_base`):
            the offline base locally, the official DINO ViT-S/16 in Colab, ``$GLARE_BASE`` when set.
        data: the datasets the chapter asked for: name -> folder, or None when it is missing (IDD-Lite needs
            a registration; the chapter skips what needs it).
    """

    device: torch.device
    smoke: bool
    colab: bool
    data_dir: Path
    seed: int = 0
    base: str = ""
    data: Mapping[str, Path | None] = field(default_factory=dict)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def has(self, dataset: str) -> bool:
        """True when ``dataset`` was found or downloaded by :func:`setup`."""
        return self.data.get(dataset) is not None

    def pick(self, full: Any, smoke: Any) -> Any:
        """``smoke`` in smoke mode, else ``full``: ``steps = env.pick(300, 3)``."""
        return smoke if self.smoke else full


def pick_device() -> torch.device:
    """CUDA if available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_plot_defaults() -> None:
    """Matplotlib defaults shared by every figure of the book (readable in the HTML book and in Colab)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "figure.figsize": (7.0, 4.0),
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "image.interpolation": "nearest",
        }
    )


def use_inline_figures() -> bool:
    """In a Jupyter kernel, draw figures inline even if ``MPLBACKEND=Agg`` is exported (the Makefile does).

    Returns True when the inline backend was selected, False outside a kernel (scripts, tests).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    shell.run_line_magic("matplotlib", "inline")
    return True


def _first_data_dir() -> Path:
    roots = data_roots()
    for root in roots:
        if root.is_dir():
            return root
    return roots[-1]


def setup(seed: int = 0, verbose: bool = True, data: Sequence[str] = ("camvid",), base: bool = True) -> Env:
    """Prepare a notebook: bootstrap (install in Colab, data, base model), pick the device, seed, set plot
    defaults, report smoke mode.

    Args:
        seed: the seed for Python, NumPy and PyTorch.
        verbose: print what was done and found (set-up line, device, smoke mode).
        data: the datasets the chapter reads; CamVid is downloaded when missing, IDD-Lite is reported missing.
        base: pick the base model (``env.base``); False for chapters that load none.

    Returns:
        :class:`Env` with ``device``, ``smoke``, ``colab``, ``data_dir``, ``seed``, ``base`` and ``data``.
    """
    smoke = smoke_mode()
    if smoke:
        # tqdm >= 4.66 reads TQDM_DISABLE: no progress bars (the set-up's downloads included), so smoke runs
        # print the same lines every time.
        os.environ["TQDM_DISABLE"] = "1"
    done = bootstrap(data=data, base=base, verbose=verbose)
    colab = done.colab
    device = pick_device()
    seed_everything(seed)
    use_inline_figures()
    set_plot_defaults()
    env = Env(
        device=device,
        smoke=smoke,
        colab=colab,
        data_dir=_first_data_dir(),
        seed=seed,
        base=done.base or "",
        data=done.data,
    )
    if verbose:
        name = torch.cuda.get_device_name(0) if env.on_gpu else "CPU"
        print(f"device: {device} ({name}) | torch {torch.__version__} | colab: {colab}")
        print(
            "smoke mode: ON (GLARE_SMOKE=1, every run shrunk to seconds)"
            if smoke
            else "smoke mode: off (full runs; set GLARE_SMOKE=1 for a quick pass)"
        )
        if device.type == "cpu":
            print(CPU_WARNING if not smoke else "CPU: fine for smoke mode.")
    return env


# ----------------------------------------------------------------------------------------- cached heavy work
def resolve_result_path(path: str | os.PathLike) -> Path:
    """A relative ``results/...`` path is taken inside :func:`glare_core.paths.results_dir` when there is one;
    other relative paths (and ``results/...`` where no results folder exists, e.g. in Colab) start at the
    repository root when running from a checkout, else at the current folder."""
    path = Path(path)
    if path.is_absolute():
        return path
    if path.parts[:1] == ("results",):
        try:
            return results_dir().joinpath(*path.parts[1:])
        except FileNotFoundError:
            pass
    base = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()
    return base / path


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} as JSON; return dicts, lists, numbers or tensors")


def save_result(value: Any, path: Path) -> Path:
    """Save ``value`` at ``path`` by suffix: ``.json`` (JSON), ``.pt``/``.pth`` (torch.save), ``.npz`` (a dict
    of arrays), atomically (:func:`~glare_core.runs.atomic_write`: an interrupted cell leaves the old file or
    none). Returns ``path``. Value first, like :func:`glare_core.evaluation.save_result`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_text(path, json.dumps(value, indent=2, default=_to_jsonable) + "\n")
    elif suffix in (".pt", ".pth"):
        atomic_write(path, lambda f: torch.save(value, f), binary=True)
    elif suffix == ".npz":
        atomic_write(path, lambda f: np.savez_compressed(f, **value), binary=True)
    else:
        raise ValueError(f"{path}: unknown result format {suffix!r}; use .json, .pt or .npz")
    return path


def load_result(path: Path) -> Any:
    """Load a result saved by :func:`save_result`."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(path.read_text())
        if suffix in (".pt", ".pth"):  # tensors and plain data only: a stored file never runs code
            return safe_torch_load(path, "stored result")
        if suffix == ".npz":
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
    except Exception as err:  # a truncated or hand-edited file
        raise ValueError(f"{path}: cannot read this stored result ({err}); delete it to recompute") from err
    raise ValueError(f"{path}: unknown result format {suffix!r}; use .json, .pt or .npz")


def load_or_compute(
    path: str | os.PathLike, fn: Callable[[], Any], force: bool = False, verbose: bool = True
) -> Any:
    """Load the stored result at ``path`` if present, else compute it with ``fn()`` and save it.

    Heavy cells of the book call this, so that the full run's result (committed under ``results/``) is loaded
    in seconds, and a reader who deletes the file, or sets ``GLARE_RECOMPUTE=1``, recomputes it.

    In smoke mode (``GLARE_SMOKE=1``) ``fn`` always runs (it is small there) and nothing is saved, so a smoke
    run never overwrites a full result.

    Args:
        path: ``.json``, ``.pt`` or ``.npz`` file; relative paths start at the repository root.
        fn: computes the result (no arguments).
        force: recompute even if the file exists (also ``GLARE_RECOMPUTE=1``).
        verbose: print where the result came from.
    """
    target = resolve_result_path(path)
    if smoke_mode():
        if verbose:
            print(f"smoke mode: computing (not saved to {path})")
        return fn()
    force = force or os.environ.get("GLARE_RECOMPUTE", "0") not in ("", "0")
    if target.exists() and not force:
        if verbose:
            print(f"loaded stored result {path}")
        return load_result(target)
    value = fn()
    save_result(value, target)
    if verbose:
        print(f"computed and saved {path}")
    return value


# ----------------------------------------------------------------------------------------- attention
@torch.no_grad()
def cls_attention_heads(backbone: Backbone, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Per-head [CLS] -> patch attention of the last block, for the book's attention figures.

    :class:`~glare_core.backbone.Backbone` returns this map averaged over heads (``BackboneOutput.attn``, what
    GLARE's regional term samples from); chapter 1 looks at the heads one by one. The last block's ``qkv``
    output is captured with a forward hook and the [CLS] row ``softmax(q_cls k^T / sqrt(d))`` is recomputed
    per head. Its mean over heads equals ``BackboneOutput.attn`` (``tests/test_book.py`` checks it).

    Args:
        backbone: a :class:`~glare_core.backbone.Backbone`.
        images: (B, 3, H, W) in [0, 1], H and W multiples of the patch size.

    Returns:
        ((B, heads, N) attention over the patches, (h, w) patch grid).
    """
    attn_mod = backbone.vit.blocks[-1].attn
    captured: list[torch.Tensor] = []
    hook = attn_mod.qkv.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        out = backbone(images, return_attn=False)
    finally:
        hook.remove()
    qkv = captured[-1]
    B, T, _ = qkv.shape
    heads, head_dim = attn_mod.num_heads, attn_mod.head_dim
    q, k, _ = qkv.reshape(B, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, T, d)
    q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
    logits = (q[:, :, :1].float() * head_dim**-0.5) @ k.float().transpose(-2, -1)  # (B, heads, 1, T)
    n = out.grid[0] * out.grid[1]
    return logits.softmax(dim=-1)[:, :, 0, T - n :], out.grid


# ----------------------------------------------------------------------------------------- figures
def to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 or float in [0, 1] tensor, or (H, W, 3) array -> (H, W, 3) array for ``imshow``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 1)
    return image.squeeze()


def colorize_labels(
    label: torch.Tensor | np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ``ignore_index`` pixels are black."""
    label = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = 0
    return lut[label.astype(np.int64).clip(0, 255)]


def show_images(
    images: Sequence[Any],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    size: float = 3.0,
    cmap: str | None = None,
    suptitle: str | None = None,
):
    """Draw images in a grid and return the figure.

    Args:
        images: tensors (3, H, W) / (H, W) or arrays (H, W, 3) / (H, W).
        titles: one title per image.
        ncols: images per row.
        size: inches per image (width).
        cmap: colour map for single-channel images.
        suptitle: a title over the grid.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    first = to_numpy_image(images[0])
    aspect = first.shape[0] / first.shape[1]
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * aspect * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_numpy_image(images[i]), cmap=cmap)
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
