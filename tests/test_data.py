"""Dataset loaders on tiny fixtures in official layouts; bad input; reduced splits; synthetic and HF data."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import (
    H,
    W,
    corrupt,
    make_ade20k,
    make_camvid,
    make_cityscapes,
    make_idd_lite,
    make_loveda,
    truncate,
    write_image,
    write_label,
)
from PIL import Image

from glare_core.data import (
    DATASETS,
    DataError,
    MissingLabelsError,
    MissingSplitError,
    SplitRequest,
    build_dataset,
    collate,
)
from glare_core.data.base import LabelMap, reduce_indices, tuning_indices

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "camvid").is_dir(), reason="../shared/data is absent")


def raw_of(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def assert_same_items(ds, ref):
    assert (ds.name, ds.split, ds.size, ds.has_labels) == (ref.name, ref.split, ref.size, ref.has_labels)
    assert ds.image_paths == ref.image_paths and len(ds) >= 2
    for i in range(len(ds)):
        a, b = ds[i], ref[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in ("image", "label") if k in a)


def check_item(ds, item, labelled=True):
    img = item["image"]
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
    assert isinstance(item["path"], str)
    if labelled:
        lab = item["label"]
        assert lab.dtype == torch.int64 and tuple(lab.shape) == tuple(img.shape[1:])
        vals = set(lab.unique().tolist())
        assert vals <= set(range(ds.num_classes)) | {255}
    else:
        assert "label" not in item


# ----------------------------------------------------------------------------------------------------
# Loaders on fixtures
# ----------------------------------------------------------------------------------------------------

LOADERS = [
    # name, maker, split, expected count, classes, {raw id: train id}
    ("camvid", make_camvid, "train", 4, 11, {0: 0, 10: 10, 11: 255}),
    ("idd_lite", make_idd_lite, "train", 3, 7, {0: 0, 6: 6, 255: 255}),
    ("cityscapes", make_cityscapes, "train", 3, 19, {7: 0, 33: 18, 0: 255, 9: 255, 26: 13}),
    ("ade20k", make_ade20k, "train", 3, 150, {0: 255, 1: 0, 150: 149, 75: 74}),
    ("loveda", make_loveda, "train", 4, 7, {0: 255, 1: 0, 7: 6}),
]


@pytest.mark.parametrize("name,maker,split,count,num_classes,mapping", LOADERS)
def test_loader_on_fixture(tmp_path, name, maker, split, count, num_classes, mapping):
    folder = maker(tmp_path)
    ds = build_dataset(name, split, root=folder)
    assert ds.name == name and ds.split == split and len(ds) == count
    assert ds.num_classes == num_classes == len(ds.classes) == len(ds.palette)
    assert ds.ignore_index == 255 and ds.has_labels
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        check_item(ds, item)
        assert tuple(item["image"].shape) == (3, H, W)
        # the raw -> train mapping, checked pixel by pixel against the file on disk
        raw = raw_of(ds.label_paths[i])
        lab = item["label"].numpy()
        for r, t in mapping.items():
            if (raw == r).any():
                seen.add(r)
                assert (lab[raw == r] == t).all(), (r, t)
    assert seen == set(mapping)
    # the parent folder works as root too
    assert len(build_dataset(name, split, root=folder.parent)) == count


@pytest.mark.parametrize("name,maker", [(n, m) for n, m, *_ in LOADERS])
def test_unlabelled_and_val(tmp_path, name, maker):
    folder = maker(tmp_path)
    ds = build_dataset(name, "val", root=folder, labels=False)
    assert not ds.has_labels and len(ds) >= 2
    check_item(ds, ds[0], labelled=False)
    assert len(build_dataset(name, "validation", root=folder)) == len(ds)


def test_camvid_jpg_frames_and_test_labels(tmp_path):
    folder = make_camvid(tmp_path, ext=".jpg", test_labels=True)
    ds = build_dataset("camvid", "test", root=folder)
    assert len(ds) == 2 and ds.image_paths[0].endswith(".jpg")
    check_item(ds, ds[1])


def test_loveda_domains(tmp_path):
    folder = make_loveda(tmp_path)
    assert len(build_dataset("loveda", "train", root=folder, domain="urban")) == 2
    assert len(build_dataset("loveda", "train", root=folder, domain="rural")) == 2
    assert len(build_dataset("loveda", "test", root=folder, labels=False)) == 4
    with pytest.raises(MissingLabelsError, match="masks_png"):
        build_dataset("loveda", "test", root=folder)
    with pytest.raises(DataError, match="domain"):
        build_dataset("loveda", "train", root=folder, domain="suburban")


def test_found_through_glare_data_dir(tmp_path, monkeypatch):
    make_camvid(tmp_path)
    make_idd_lite(tmp_path)
    monkeypatch.setenv("GLARE_DATA_DIR", str(tmp_path))
    assert str(build_dataset("camvid", "train").image_paths[0]).startswith(str(tmp_path))
    assert str(build_dataset("idd_lite", "val").image_paths[0]).startswith(str(tmp_path))


def test_resize_and_collate(tmp_path):
    folder = make_camvid(tmp_path)
    ds = build_dataset("camvid", "train", root=folder, size=(16, 20))
    item = ds[0]
    check_item(ds, item)
    assert tuple(item["image"].shape) == (3, 16, 20)
    # nearest-neighbour labels: only ids that exist in the full-size map
    full = build_dataset("camvid", "train", root=folder)[0]["label"]
    assert set(item["label"].unique().tolist()) <= set(full.unique().tolist())
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 16, 20) and batch["label"].shape == (3, 16, 20)
    assert len(batch["path"]) == 3
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    assert next(iter(loader))["image"].dtype == torch.uint8


def test_collate_refuses_mixed_sizes(tmp_path):
    folder = make_camvid(tmp_path)
    write_image(folder / "train" / "0001TP_000000.png", np.random.default_rng(1), size=(30, 40))
    write_label(folder / "trainannot" / "0001TP_000000.png", np.random.default_rng(1), [0, 1], size=(30, 40))
    ds = build_dataset("camvid", "train", root=folder)
    with pytest.raises(DataError, match="size"):
        collate([ds[0], ds[1]])


# ----------------------------------------------------------------------------------------------------
# Reduced split
# ----------------------------------------------------------------------------------------------------


def test_reduce_indices_is_seeded_and_nested():
    a = reduce_indices(100, 10, seed=3)
    assert a == reduce_indices(100, 10, seed=3) and len(a) == 10 and a == sorted(a)
    assert a != reduce_indices(100, 10, seed=4)
    assert set(reduce_indices(100, 5, seed=3)) <= set(a)
    assert reduce_indices(7, None) == list(range(7))
    with pytest.warns(UserWarning, match="larger"):
        assert reduce_indices(7, 9) == list(range(7))
    with pytest.raises(DataError):
        reduce_indices(7, 0)


def test_limit_keeps_pairs(tmp_path):
    folder = make_camvid(tmp_path, counts={"train": 12})
    ds = build_dataset("camvid", "train", root=folder, limit=5, seed=1)
    assert len(ds) == 5
    assert ds.image_paths == build_dataset("camvid", "train", root=folder, limit=5, seed=1).image_paths
    for img, lab in zip(ds.image_paths, ds.label_paths):
        assert Path(img).stem == Path(lab).stem


def test_limit_selects_reduce_indices_of_the_full_split(tmp_path):
    folder = make_camvid(tmp_path, counts={"train": 23})
    full = build_dataset("camvid", "train", root=folder)
    for limit, seed in [(1, 0), (5, 1), (9, 7), (22, 3)]:
        ds = build_dataset("camvid", "train", root=folder, limit=limit, seed=seed)
        keep = reduce_indices(len(full), limit, seed)
        assert ds.image_paths == [full.image_paths[i] for i in keep]
        assert ds.label_paths == [full.label_paths[i] for i in keep]


def test_tuning_splits_then_limit(tmp_path):
    folder = make_camvid(tmp_path, counts={"train": 23})
    full = build_dataset("camvid", "train", root=folder)
    train_idx, val_idx = tuning_indices(len(full))
    for split, part in (("tune_train", train_idx), ("tune_val", val_idx)):
        whole = build_dataset("camvid", split, root=folder, seed=4)
        assert whole.split == split and whole.image_paths == [full.image_paths[i] for i in part]
        ds = build_dataset("camvid", split, root=folder, limit=3, seed=4)
        assert ds.split == split
        assert ds.image_paths == [whole.image_paths[i] for i in reduce_indices(len(part), 3, 4)]
        assert ds.label_paths == [whole.label_paths[i] for i in reduce_indices(len(part), 3, 4)]


@pytest.mark.parametrize(
    "name,maker,fields,options",
    [
        ("camvid", make_camvid, {"split": "val", "size": (16, 20)}, {}),
        ("loveda", make_loveda, {"labels": False, "strict": False}, {"domain": "urban"}),
        ("synthetic", None, {"split": "val", "seed": 3, "size": (24, 32)}, {"num_images": 5}),
    ],
)
def test_builder_called_with_a_request_is_build_dataset(tmp_path, name, maker, fields, options):
    request = SplitRequest(root=maker(tmp_path) if maker else None, **fields)
    ds = DATASETS[name](request, **options)
    ref = build_dataset(name, **asdict(request), **options)
    assert_same_items(ds, ref)


def test_synthetic_request_without_size_is_112():
    ds = DATASETS["synthetic"](SplitRequest(), num_images=2)
    assert ds.size == (112, 112) and tuple(ds[0]["image"].shape) == (3, 112, 112)


# ----------------------------------------------------------------------------------------------------
# Bad input: every case raises DataError naming the file and the fix
# ----------------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist") as e:
        build_dataset("camvid", root=tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "Fix" in str(e.value)
    monkeypatch.setenv("GLARE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("glare_core.paths.REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="not found.*GLARE_DATA_DIR"):
        build_dataset("ade20k")
    with pytest.raises(DataError, match="does not look like"):
        build_dataset("cityscapes", root=tmp_path)


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset("pascal_voc")
    folder = make_camvid(tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        build_dataset("camvid", "holdout", root=folder)
    with pytest.raises(DataError, match="unknown split"):
        build_dataset("ade20k", "test", root=make_ade20k(tmp_path))


def test_empty_split(tmp_path):
    folder = make_camvid(tmp_path)
    (folder / "empty").mkdir()
    for f in (folder / "val").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no images found") as e:
        build_dataset("camvid", "val", root=folder)
    assert str(folder / "val") in str(e.value)
    make_cityscapes(tmp_path)
    (tmp_path / "cityscapes" / "leftImg8bit" / "test").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_dataset("cityscapes", "test", root=tmp_path / "cityscapes", labels=False)


def test_missing_split_folder(tmp_path):
    folder = make_cityscapes(tmp_path)
    with pytest.raises(MissingSplitError, match="leftImg8bit/test"):
        build_dataset("cityscapes", "test", root=folder)


def test_labels_a_split_does_not_have(tmp_path):
    folder = make_camvid(tmp_path)
    with pytest.raises(MissingLabelsError, match="testannot") as e:
        build_dataset("camvid", "test", root=folder)
    assert "labels=False" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(MissingLabelsError, match="gtFine"):
        build_dataset("idd_lite", "test", root=make_idd_lite(tmp_path))


def test_image_without_label(tmp_path):
    folder = make_camvid(tmp_path)
    write_image(folder / "train" / "0001TP_999999.png", np.random.default_rng(0))
    with pytest.raises(DataError, match="0001TP_999999.png: no label map") as e:
        build_dataset("camvid", "train", root=folder)
    assert e.value.path.endswith("0001TP_999999.png")
    ds = build_dataset("camvid", "train", root=folder, strict=False)
    assert len(ds) == 4 and len(ds.problems) == 1


@pytest.mark.parametrize("breaker", [corrupt, truncate])
def test_corrupt_or_truncated_image(tmp_path, breaker):
    folder = make_camvid(tmp_path, ext=".jpg")
    ds = build_dataset("camvid", "train", root=folder)
    bad = breaker(Path(ds.image_paths[1]))
    ds[0]  # the others still load
    with pytest.raises(DataError, match="corrupt or truncated") as e:
        ds[1]
    assert str(bad) in str(e.value) and "Fix" in str(e.value)


def test_truncated_label(tmp_path):
    folder = make_camvid(tmp_path)
    ds = build_dataset("camvid", "train", root=folder)
    truncate(Path(ds.label_paths[2]), keep=0.3)
    with pytest.raises(DataError, match="trainannot"):
        ds[2]


def test_size_mismatch(tmp_path):
    folder = make_idd_lite(tmp_path)
    ds = build_dataset("idd_lite", "train", root=folder)
    write_label(Path(ds.label_paths[0]), np.random.default_rng(0), [0, 1], size=(H + 2, W))
    with pytest.raises(DataError, match="label map .* is") as e:
        ds[0]
    assert ds.image_paths[0] in str(e.value) and "size=(H, W)" in str(e.value)
    # resizing both is the documented way out
    item = build_dataset("idd_lite", "train", root=folder, size=(H, W))[0]
    assert tuple(item["label"].shape) == (H, W)


@pytest.mark.parametrize(
    "name,maker,bad_id",
    [
        ("camvid", make_camvid, 12),
        ("camvid", make_camvid, 200),
        ("ade20k", make_ade20k, 151),
        ("loveda", make_loveda, 8),
    ],
)
def test_label_ids_outside_class_set(tmp_path, name, maker, bad_id):
    folder = maker(tmp_path)
    ds = build_dataset(name, "train", root=folder)
    write_label(Path(ds.label_paths[0]), np.random.default_rng(0), [0, 1, bad_id])
    with pytest.raises(DataError, match=rf"label ids \[{bad_id}\] are not in the class set") as e:
        ds[0]
    assert ds.label_paths[0] in str(e.value)


def test_colour_label_map(tmp_path):
    folder = make_camvid(tmp_path)
    ds = build_dataset("camvid", "train", root=folder)
    write_image(Path(ds.label_paths[0]), np.random.default_rng(0))
    with pytest.raises(DataError, match="colour image"):
        ds[0]


def test_label_map_validation():
    lm = LabelMap.identity(3, ignore_ids=(9,))
    assert lm.apply(np.array([[0, 2, 9]], dtype=np.uint8)).tolist() == [[0, 2, 255]]
    with pytest.raises(DataError, match=r"\[5\]"):
        lm.apply(np.array([[0, 5]], dtype=np.uint8))
    with pytest.raises(DataError, match=r"\[300\]"):
        lm.apply(np.array([[0, 300]], dtype=np.int32))
    with pytest.raises(ValueError):
        LabelMap(3, {0: 7})


# ----------------------------------------------------------------------------------------------------
# Synthetic
# ----------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_labelled():
    ds = build_dataset("synthetic", "train", num_images=6, size=(48, 64), seed=5)
    assert ds.name == "synthetic" and len(ds) == 6 and ds.num_classes == 5
    a, b = ds[2], build_dataset("synthetic", "train", num_images=6, size=(48, 64), seed=5)[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    check_item(ds, a)
    assert tuple(a["image"].shape) == (3, 48, 64)
    assert not torch.equal(
        a["image"], build_dataset("synthetic", "train", num_images=6, size=(48, 64), seed=6)[2]["image"]
    )
    assert not torch.equal(
        a["image"], build_dataset("synthetic", "val", num_images=6, size=(48, 64), seed=5)[2]["image"]
    )
    classes = set()
    for i in range(len(ds)):
        classes |= set(ds[i]["label"].unique().tolist())
    assert 0 in classes and len(classes) >= 3
    # shapes differ from the background in colour: mean colour per class differs
    item = ds[0]
    img, lab = item["image"].float(), item["label"]
    present = lab.unique().tolist()
    means = [img[:, lab == c].mean(1) for c in present]
    assert all((means[0] - m).abs().max() > 5 for m in means[1:])


def test_synthetic_limit_is_a_subset():
    full = build_dataset("synthetic", "train", num_images=10, size=(32, 32), seed=0)
    sub = build_dataset("synthetic", "train", num_images=10, size=(32, 32), seed=0, limit=3)
    assert len(sub) == 3
    for i, path in enumerate(sub.image_paths):
        j = full.image_paths.index(path)
        assert torch.equal(sub[i]["image"], full[j]["image"])
    assert "label" not in build_dataset("synthetic", labels=False, num_images=2, size=(32, 32))[0]
    batch = collate([full[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32)


def test_registry_names():
    assert set(DATASETS) == {"camvid", "idd_lite", "cityscapes", "ade20k", "loveda", "hf", "synthetic"}


# ----------------------------------------------------------------------------------------------------
# Hugging Face (parquet)
# ----------------------------------------------------------------------------------------------------


def _parquet(tmp_path, mask: bool):
    import datasets

    rng = np.random.default_rng(0)
    rows = {"image": [], "label": []}
    for _ in range(5):
        rows["image"].append(Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)))
        if mask:
            rows["label"].append(
                Image.fromarray(rng.choice(np.array([0, 1, 2, 255], np.uint8), (H, W)), mode="L")
            )
        else:
            rows["label"].append(int(rng.integers(0, 3)))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Image() if mask else datasets.ClassLabel(names=["cat", "dog", "eel"]),
        }
    )
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def test_hf_parquet_segmentation(tmp_path):
    path = _parquet(tmp_path, mask=True)
    cache = str(tmp_path / "hf_cache")
    ds = build_dataset("hf", "train", data_files=str(path), classes=["a", "b", "c"], cache_dir=cache, limit=4)
    assert len(ds) == 4 and ds.has_labels and ds.task == "segmentation" and ds.num_classes == 3
    item = ds[0]
    check_item(ds, item)
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 255}
    # the folder layout (root=) finds train-*.parquet too; reduce_zero_label maps 0 -> 255
    ds2 = build_dataset(
        "hf", "train", root=path.parent, classes=["b", "c"], reduce_zero_label=True, cache_dir=cache
    )
    assert len(ds2) == 5 and ds2.num_classes == 2
    lab = ds2[0]["label"]
    raw = np.asarray(ds2.hf[0]["label"])
    assert (lab.numpy()[raw == 0] == 255).all() and (lab.numpy()[raw == 1] == 0).all()
    with pytest.raises(DataError, match="classes="):
        build_dataset("hf", "train", data_files=str(path), cache_dir=cache)
    with pytest.raises(DataError, match="image_column"):
        build_dataset("hf", "train", data_files=str(path), classes=["a"], image_column="img", cache_dir=cache)
    with pytest.raises(DataError, match=r"\[2\]"):
        build_dataset("hf", "train", data_files=str(path), classes=["a", "b"], cache_dir=cache)[0]


def test_hf_builder_called_with_a_request(tmp_path):
    path = _parquet(tmp_path, mask=True)
    options = {"data_files": str(path), "classes": ["a", "b", "c"], "cache_dir": str(tmp_path / "hf_cache")}
    request = SplitRequest(size=(8, 12))
    assert_same_items(DATASETS["hf"](request, **options), build_dataset("hf", **asdict(request), **options))


def test_hf_parquet_classification_and_offline_hub(tmp_path, monkeypatch):
    path = _parquet(tmp_path, mask=False)
    ds = build_dataset("hf", "train", data_files=[str(path)], cache_dir=str(tmp_path / "c"))
    assert ds.task == "classification" and ds.classes == ("cat", "dog", "eel") and not ds.has_labels
    item = ds[0]
    assert item["image"].shape == (3, H, W) and isinstance(item["target"], int) and "label" not in item
    assert collate([ds[0], ds[1]])["target"].shape == (2,)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        build_dataset("hf", "train", hub_id="someone/some-dataset")
    with pytest.raises(DataError, match="not found"):
        build_dataset("hf", "train", data_files=str(tmp_path / "missing.parquet"))


# ----------------------------------------------------------------------------------------------------
# Real data (../shared/data)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.realdata
@needs_shared
def test_real_camvid_counts_and_item():
    counts = {
        s: len(build_dataset("camvid", s, root=SHARED / "camvid", labels=s != "test"))
        for s in ("train", "val", "test")
    }
    assert counts == {"train": 367, "val": 101, "test": 233}
    ds = build_dataset("camvid", "val", root=SHARED / "camvid", limit=2, seed=0)
    item = ds[0]
    check_item(ds, item)
    assert tuple(item["image"].shape) == (3, 360, 480)
    with pytest.raises(MissingLabelsError):
        build_dataset("camvid", "test", root=SHARED / "camvid")


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "idd_lite").is_dir(), reason="../shared/data is absent")
def test_real_idd_lite_counts_and_item():
    root = SHARED / "idd_lite"
    assert len(build_dataset("idd_lite", "train", root=root)) == 1403
    assert len(build_dataset("idd_lite", "val", root=root)) == 204
    assert len(build_dataset("idd_lite", "test", root=root, labels=False)) == 404
    ds = build_dataset("idd_lite", "val", root=root, limit=2)
    item = ds[1]
    check_item(ds, item)
    assert tuple(item["image"].shape) == (3, 227, 320)


def test_tuning_split_is_fixed_disjoint_and_covers_train():
    train, val = tuning_indices(367)
    assert (len(train), len(val)) == (300, 67)
    assert not set(train) & set(val) and sorted(train + val) == list(range(367))
    assert tuning_indices(367) == (train, val)  # the same for every run
    ds = build_dataset("synthetic", "tune_val", num_images=20, seed=3)
    assert (
        ds.split == "tune_val"
        and len(ds) == 4
        and len(build_dataset("synthetic", "tune_train", num_images=20)) == 16
    )


@needs_shared
@pytest.mark.realdata
def test_camvid_tuning_split_is_300_and_67_training_frames():
    tune_train = build_dataset("camvid", "tune_train", labels=False)
    tune_val = build_dataset("camvid", "tune_val", labels=False)
    train = build_dataset("camvid", "train", labels=False)
    assert (len(tune_train), len(tune_val)) == (300, 67)
    assert set(tune_train.image_paths) | set(tune_val.image_paths) == set(train.image_paths)
    assert not set(tune_train.image_paths) & set(tune_val.image_paths)
