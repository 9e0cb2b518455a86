"""Fault family 6, non-atomic exports: the adapter, ``summary.json`` and every other file the package writes
are written whole or not at all, and a damaged export of a finished run is written again on ``--resume``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from glare_core.config import preset
from glare_core.errors import CheckpointError
from glare_core.runs import atomic_path
from glare_core.teacher import read_adapter
from glare_core.train import pretrain


def _cfg():
    cfg = preset("smoke")
    cfg.steps, cfg.checkpoint_every = 2, 2
    return cfg


def _finished(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    pretrain(_cfg(), out)
    return out


def test_truncated_adapter_is_named_and_re_exported_on_resume(tmp_path: Path):
    out = _finished(tmp_path)
    adapter = out / "adapter.safetensors"
    good, meta = read_adapter(adapter)
    good = {k: v.clone() for k, v in good.items()}
    data = adapter.read_bytes()
    adapter.write_bytes(data[: len(data) // 2])  # what an in-place write killed half-way left
    with pytest.raises(CheckpointError, match=str(adapter)):
        read_adapter(adapter)
    pretrain(_cfg(), out, resume=True)  # the run is finished: only the export is redone
    again, meta_again = read_adapter(adapter)
    assert meta_again == meta and again.keys() == good.keys()
    assert all(torch.equal(again[k], good[k]) for k in good)


def test_unreadable_summary_is_rewritten_on_resume(tmp_path: Path):
    out = _finished(tmp_path)
    (out / "summary.json").write_text('{"steps": 2, "final')
    summary = pretrain(_cfg(), out, resume=True)
    assert json.loads((out / "summary.json").read_text())["steps"] == summary["steps"] == 2


def test_a_failed_adapter_export_keeps_the_previous_file(tmp_path: Path, monkeypatch):
    out = _finished(tmp_path)
    adapter = out / "adapter.safetensors"
    good = adapter.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    from glare_core.teacher import StudentTeacher

    with pytest.raises(OSError, match="No space"):
        StudentTeacher.export_adapter(_model_for(out), adapter)
    assert adapter.read_bytes() == good
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


def test_summary_records_the_data_root(tmp_path: Path):
    from fixtures_data import make_camvid

    folder = make_camvid(tmp_path / "data", counts={"train": 4})
    cfg = preset("smoke")
    cfg.dataset, cfg.root, cfg.steps, cfg.limit = "camvid", str(folder), 1, None
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["data_root"] == str(folder.resolve())


def test_summary_and_probe_result_record_the_code_they_started_with(tmp_path: Path, monkeypatch):
    import glare_core.evaluation as evaluation
    import glare_core.train as train
    from glare_core.data import build_dataset

    state = {"git_commit": "0" * 40, "git_dirty": True}
    monkeypatch.setattr(train, "code_state", lambda: dict(state))
    monkeypatch.setattr(evaluation, "code_state", lambda: dict(state))
    cfg = preset("smoke")
    cfg.steps = 1
    summary = pretrain(cfg, tmp_path / "run")
    assert (summary["git_commit"], summary["git_dirty"]) == ("0" * 40, True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["git_commit"] == "0" * 40
    train_ds = build_dataset("synthetic", "train", num_images=4, size=(64, 96), seed=0)
    val_ds = build_dataset("synthetic", "val", num_images=2, size=(64, 96), seed=1)
    backbone = evaluation.load_backbone("random:test_vit")
    result = evaluation.evaluate_backbone(backbone, train_ds, val_ds, evaluation.ProbeConfig.smoke())
    assert (result["git_commit"], result["git_dirty"]) == ("0" * 40, True)


def _model_for(out: Path):
    from glare_core.teacher import StudentTeacher
    from glare_core.weights import load_base_with_head

    cfg = preset("smoke")
    backbone, head = load_base_with_head(cfg.base, verbose=False)
    return StudentTeacher(backbone, cfg.student_teacher_config(), head_state_dict=head, base_name=cfg.base)


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path: Path):
    """Every file the package writes through a file name (adapters, banks, caches, weights) goes through
    ``runs.atomic_path``: the old file survives a failed writer, and no temporary is left either way."""
    path = tmp_path / "bank.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]
    fresh = tmp_path / "plain"
    fresh.write_text("")
    assert path.stat().st_mode & 0o777 == fresh.stat().st_mode & 0o777  # what a plain open gives
