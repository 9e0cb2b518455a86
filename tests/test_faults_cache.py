"""Fault family 4, stale labels: the feature cache is keyed on the label files too.

After every label map of a split is rewritten, the next evaluation reads the new labels (the features of the
unchanged images may still come from the cache).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from fixtures_data import make_camvid, write_label

from glare_core.backbone import create_backbone
from glare_core.data import build_dataset
from glare_core.features import extract_features, label_fingerprint


def test_rewritten_labels_are_not_served_from_the_cache(tmp_path: Path):
    folder = make_camvid(tmp_path / "data", counts={"train": 2, "val": 2})
    torch.manual_seed(0)
    backbone = create_backbone("test_vit").eval()
    cache = tmp_path / "cache"

    def labels():
        ds = build_dataset("camvid", "val", root=folder)
        return extract_features(backbone, ds, size=(32, 32), labels="full", cache=True, cache_root=cache)

    first = labels()
    assert not first.cached
    rng = np.random.default_rng(7)
    for path in sorted((folder / "valannot").iterdir()):  # every val label rewritten (one class now)
        st = os.stat(path)
        write_label(path, rng, [3])
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = labels()
    truth = build_dataset("camvid", "val", root=folder)
    assert torch.equal(second.labels[0].long(), truth[0]["label"].long())
    assert not torch.equal(first.labels[0], second.labels[0])
    assert torch.equal(first.features, second.features)  # the images did not change


def test_label_fingerprint_follows_label_files(tmp_path: Path):
    folder = make_camvid(tmp_path / "data", counts={"train": 2, "val": 2})
    ds = build_dataset("camvid", "val", root=folder)
    before = label_fingerprint(ds)
    assert label_fingerprint(build_dataset("camvid", "val", root=folder)) == before  # stable across objects
    path = Path(ds.label_paths[0])
    write_label(path, np.random.default_rng(1), [1, 2])
    os.utime(path, ns=(0, 10**9))
    assert label_fingerprint(ds) != before
