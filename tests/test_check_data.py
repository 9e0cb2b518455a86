"""``glare check-data``: counts, sizes, class histogram, every bad file listed, exit codes 0 / 1 / 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import corrupt, make_camvid, make_idd_lite, truncate, write_image, write_label

from glare_core.commands import check_data
from glare_core.data import build_dataset
from glare_core.data.check import check_dataset, check_split

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run(argv: list[str]) -> int:
    """Run the command module directly (independent of the other commands' import state)."""
    parser = argparse.ArgumentParser()
    check_data.add_arguments(parser)
    return check_data.run(parser.parse_args(argv))


def test_good_dataset_exit_0(tmp_path, capsys):
    folder = make_camvid(tmp_path)
    out_json = tmp_path / "report.json"
    assert run(["camvid", "--root", str(folder), "--no-progress", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "camvid/train: 4 images, 4 labelled" in out
    assert "camvid/val: 2 images, 2 labelled" in out
    assert "camvid/test: 2 images, 0 labelled" in out and "no labels" in out
    assert "image sizes: 32x24 (W x H): 4" in out
    assert "class histogram" in out and "Bicyclist" in out and "ignore" in out
    assert "OK: 8 images in 3 split(s)" in out
    report = json.loads(out_json.read_text())
    shares = report["splits"][0]["pixel_share_percent"]
    assert abs(sum(shares.values()) - 100.0) < 1e-6


def test_histogram_matches_labels(tmp_path):
    folder = make_idd_lite(tmp_path)
    ds = build_dataset("idd_lite", "train", root=folder)
    report = check_split(ds)
    labels = np.concatenate([ds[i]["label"].numpy().ravel() for i in range(len(ds))])
    expected = [int((labels == c).sum()) for c in range(ds.num_classes)]
    assert report.pixels == expected and report.ignored == int((labels == 255).sum())
    assert report.labelled == 3 and report.ok


def test_every_bad_file_listed_exit_1(tmp_path, capsys):
    folder = make_camvid(tmp_path, counts={"train": 6, "val": 2, "test": 1})
    rng = np.random.default_rng(0)
    corrupt(folder / "train" / "0001TP_000000.png")
    truncate(folder / "train" / "0001TP_000001.png")
    write_label(folder / "trainannot" / "0001TP_000002.png", rng, [0, 1], size=(10, 10))  # size mismatch
    write_label(folder / "trainannot" / "0001TP_000003.png", rng, [0, 1, 42])  # id outside the class set
    write_image(folder / "train" / "0001TP_000077.png", rng)  # no label
    assert run(["camvid", "--root", str(folder), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "BAD FILES: 5" in out and "5 BAD FILE(S)" in out
    for stem in ("000000", "000001", "000002", "000077"):
        assert f"train/0001TP_{stem}.png" in out
    assert "trainannot/0001TP_000003.png" in out and "[42]" in out
    assert "corrupt or truncated" in out and "no label map" in out
    # the two good pairs are still counted (7 images listed: 6 pairs and one without label)
    assert "camvid/train: 7 images, 2 labelled" in out


def test_cannot_open_exit_2(tmp_path, capsys):
    assert run(["camvid", "--root", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(["no_such_set", "--no-progress"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    folder = make_camvid(tmp_path)
    assert run(["camvid", "--root", str(folder), "--split", "test", "--labels", "yes", "--no-progress"]) == 2
    assert "testannot" in capsys.readouterr().err
    assert run(["camvid", "--root", str(folder), "--split", "holdout", "--no-progress"]) == 2


def test_split_limit_and_images_only(tmp_path, capsys):
    folder = make_camvid(tmp_path, counts={"train": 8})
    assert run(["camvid", "--root", str(folder), "--split", "train", "--limit", "3", "--labels", "no"]) == 0
    out = capsys.readouterr().out
    assert "camvid/train: 3 images, 0 labelled" in out and "class histogram" not in out
    reports = check_dataset("synthetic", splits=["train", "val"], num_images=3, size=(32, 32))
    assert [r.split for r in reports] == ["train", "val"] and all(r.ok and r.labelled == 3 for r in reports)


def test_through_the_glare_cli(tmp_path, capsys):
    cli = pytest.importorskip("glare_core.cli")
    folder = make_camvid(tmp_path)
    try:
        parser = cli.build_parser()
    except Exception as e:  # another command module failing to import is not this command's fault
        pytest.skip(f"glare CLI does not build: {e}")
    assert "check-data" in parser.format_help()
    assert cli.main(["check-data", "camvid", "--root", str(folder), "--split", "val", "--no-progress"]) == 0
    assert "camvid/val: 2 images" in capsys.readouterr().out


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "camvid").is_dir(), reason="../shared/data is absent")
def test_real_camvid_val_sample(capsys):
    assert (
        run(["camvid", "--root", str(SHARED / "camvid"), "--split", "val", "--limit", "5", "--no-progress"])
        == 0
    )
    assert "camvid/val: 5 images, 5 labelled" in capsys.readouterr().out
