"""Fault family 8, tracebacks instead of messages: bad input to ``glare`` ends with one message that names
the file and the fix, exit code 2, and no traceback; a bug still shows its traceback (exit code 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_data import make_camvid

from glare_core import cli
from glare_core.cli import main


def _pretrain(root: Path, out: Path, *extra: str) -> list[str]:
    args = ["pretrain", "--preset", "smoke", "--dataset", "camvid", "--root", str(root), "--out", str(out)]
    return [*args, "--set", "limit=none", *extra]


def _clear_error(capsys, *must_name: object) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error:"), err
    for thing in must_name:
        assert str(thing) in err, (thing, err)
    return err


def test_missing_dataset(tmp_path: Path, capsys):
    assert main(_pretrain(tmp_path / "nowhere", tmp_path / "run")) == 2
    _clear_error(capsys, tmp_path / "nowhere")
    assert not (tmp_path / "run").exists()


def test_empty_dataset(tmp_path: Path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert main(_pretrain(tmp_path / "empty", tmp_path / "run")) == 2
    _clear_error(capsys, tmp_path / "empty" / "train", "Fix")
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_dataset(tmp_path: Path, capsys):
    folder = make_camvid(tmp_path / "data", counts={"train": 3})
    assert main(_pretrain(folder, tmp_path / "run", "--set", "batch_size=8")) == 2
    _clear_error(capsys, "batch_size")


def test_corrupt_jpeg_met_during_training(tmp_path: Path, capsys):
    folder = make_camvid(tmp_path / "data", counts={"train": 6}, ext=".jpg")
    bad = sorted((folder / "train").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:200])
    assert main(_pretrain(folder, tmp_path / "run", "--set", "batch_size=2")) == 2
    _clear_error(capsys, bad, "check-data")


def test_out_that_is_a_file(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["pretrain", "--preset", "smoke", "--out", str(blocker / "run")]) == 2
    _clear_error(capsys, blocker)


def test_evaluate_checks_its_out_before_the_probe(tmp_path: Path, capsys, monkeypatch):
    from glare_core import evaluation

    def must_not_run(*args, **kwargs):
        raise AssertionError("the probe ran before --out was checked")

    monkeypatch.setattr(evaluation, "evaluate_backbone", must_not_run)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [
        "evaluate",
        "--base",
        "random:test_vit",
        "--dataset",
        "synthetic",
        "--out",
        str(blocker / "r.json"),
    ]
    assert main(args) == 2
    assert str(blocker) in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path)]) == 2  # a folder, not a file name
    assert "folder" in capsys.readouterr().err


def test_corrupt_resume_checkpoint(tmp_path: Path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    assert main(["pretrain", "--preset", "smoke", "--out", str(out), "--resume"]) == 2
    _clear_error(capsys, out / "checkpoint.pt")


def test_a_bug_still_shows_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a programming error")

    monkeypatch.setattr(cli, "command_modules", lambda: [_Fake(broken)])
    with pytest.raises(KeyError):
        main(["fake"])


class _Fake:
    NAME, HELP, __doc__ = "fake", "a fake command", "fake"

    def __init__(self, run):
        self.run = run

    @staticmethod
    def add_arguments(parser):
        pass
