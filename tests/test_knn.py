"""Weighted k-NN (DINO's eval_knn) and the Tiny-ImageNet forgetting measurement."""

import pytest
import torch
import torch.nn.functional as F

from glare_core.knn import knn_accuracy, knn_classify, select_bank


def test_one_hot_features_give_100_percent():
    labels = torch.arange(7).repeat_interleave(4)  # 7 classes x 4 bank items
    bank = F.one_hot(labels, 7).float()
    query_labels = torch.arange(7).repeat(3)
    queries = F.one_hot(query_labels, 7).float() * 2.5  # scale must not matter (cosine)
    scores = knn_classify(bank, labels, queries, num_classes=7, k=20, temperature=0.07)
    assert scores.shape == (21, 7)
    assert knn_accuracy(scores, query_labels)["top1"] == 1.0


def test_votes_are_weighted_by_exp_cos_over_t():
    # One very close neighbour of class 1 against two orthogonal-ish neighbours of class 0.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.05]])
    scores = knn_classify(bank, labels, query, num_classes=2, k=3, temperature=0.07)
    cos = F.normalize(query, dim=1) @ F.normalize(bank, dim=1).T
    w = (cos / 0.07).exp()[0]
    assert scores[0, 1] == pytest.approx(float(w[0]), rel=1e-5)
    assert scores[0, 0] == pytest.approx(float(w[1] + w[2]), rel=1e-5)
    assert scores.argmax(1).item() == 1  # a plain majority vote would say 0


def test_select_bank_is_fixed_and_balanced():
    labels = [i % 5 for i in range(100)]
    a = select_bank(labels, per_class=3, seed=0)
    assert a == select_bank(labels, per_class=3, seed=0)
    assert a != select_bank(labels, per_class=3, seed=1)
    assert sorted(torch.tensor([labels[i] for i in a]).bincount().tolist()) == [3] * 5


def test_knn_forgetting_on_a_tiny_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from glare_core.backbone import create_backbone
    from glare_core.knn import knn_forgetting

    def split(n_per_class, seed):
        g = torch.Generator().manual_seed(seed)
        images, labels = [], []
        for c in range(3):
            for _ in range(n_per_class):
                colour = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[c]
                arr = (colour.view(1, 1, 3) + torch.randint(-20, 20, (16, 16, 3), generator=g)).clamp(0, 255)
                images.append(Image.fromarray(arr.to(torch.uint8).numpy()))
                labels.append(c)
        feats = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "green", "blue"])}
        )
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats)

    split(6, 0).to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    split(2, 1).to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    torch.manual_seed(0)
    backbone = create_backbone("test_vit")
    kw = dict(root=tmp_path, per_class=4, size=32, k=5, cache_root=tmp_path / "cache", progress=False)
    first = knn_forgetting(backbone, **kw)
    assert first["num_bank"] == 12 and first["num_queries"] == 6 and not first["cached"]
    assert 0.0 <= first["top1"] <= 1.0
    second = knn_forgetting(backbone, **kw)
    assert second["cached"] and second["top1"] == first["top1"]
    hits = first["top1_correct"]  # per query, for McNemar's test between two backbones
    assert len(hits) == 6 and set(hits) <= {"0", "1"} and hits.count("1") / 6 == pytest.approx(first["top1"])


def test_missing_tinyimagenet_folder_is_a_clear_error(tmp_path):
    from glare_core.knn import tinyimagenet_files

    with pytest.raises(FileNotFoundError, match="parquet"):
        tinyimagenet_files(tmp_path / "nope")
