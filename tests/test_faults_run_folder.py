"""Fault families 2 and 3, and the start of a run: nothing is overwritten or lost, and a resumed run keeps the
settings it started with.

* A new run refuses a folder that holds a run (``--resume``, a new ``--out`` or ``--overwrite``).
* ``--resume`` with changed settings is refused before anything is written; threads, workers and logging may
  change.
* Partial ``.tmp`` files a kill left are removed at the next start; a run that fails before training leaves
  no folder behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glare_core.cli import main
from glare_core.config import TrainConfig, preset
from glare_core.errors import RunFolderError
from glare_core.runs import RUN_FILES, config_changes
from glare_core.train import pretrain


def _smoke(steps: int = 3):
    cfg = preset("smoke")
    cfg.steps, cfg.checkpoint_every = steps, 3
    return cfg


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    pretrain(_smoke(), out)
    return out


def test_a_new_run_refuses_a_folder_holding_a_run(finished_run: Path, capsys):
    before = _snapshot(finished_run)
    with pytest.raises(RunFolderError, match="already holds a run") as err:
        pretrain(_smoke(), finished_run)
    assert str(finished_run) in str(err.value) and "--overwrite" in str(err.value)
    code = main(["pretrain", "--preset", "smoke", "--out", str(finished_run)])
    stderr = capsys.readouterr().err
    assert code == 2 and "--resume" in stderr and "Traceback" not in stderr
    assert _snapshot(finished_run) == before  # nothing rewritten, nothing deleted


def test_overwrite_replaces_the_run(tmp_path: Path):
    out = tmp_path / "run"
    pretrain(_smoke(), out)
    (out / "notes.txt").write_text("mine")
    cfg = _smoke(steps=2)
    summary = pretrain(cfg, out, overwrite=True)
    assert summary["steps"] == 2 and json.loads((out / "config.json").read_text())["steps"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_and_overwrite_together_are_refused(tmp_path: Path, capsys):
    assert main(["pretrain", "--preset", "smoke", "--out", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override", ["rank=4", "lr=0.0005", "dataset=camvid", "objective.lambda_local=0.5", "seed=3"]
)
def test_resume_with_changed_settings_is_refused_before_writing(finished_run: Path, override, capsys):
    before = _snapshot(finished_run)
    code = main(["pretrain", "--out", str(finished_run), "--resume", "--set", override])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert override.split("=")[0] in stderr and "Traceback" not in stderr
    assert _snapshot(finished_run) == before  # config.json still records the run's real settings


def test_resume_with_harmless_changes_is_allowed(tmp_path: Path):
    out = tmp_path / "run"
    cfg = _smoke(steps=6)
    with pytest.raises(KeyboardInterrupt):
        _interrupt(cfg, out, at_step=4)
    assert (
        main(["pretrain", "--out", str(out), "--resume", "--set", "num_threads=2", "--set", "log_every=5"])
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    assert json.loads((out / "config.json").read_text())["log_every"] == 1  # the recorded config is kept


def _interrupt(cfg, out: Path, at_step: int) -> None:
    from glare_core import objective as objective_mod

    original = objective_mod.GlareObjective.__call__

    def stop(self, model, images, step):
        if step == at_step:
            raise KeyboardInterrupt
        return original(self, model, images, step)

    objective_mod.GlareObjective.__call__ = stop
    try:
        pretrain(cfg, out)
    finally:
        objective_mod.GlareObjective.__call__ = original


def test_config_changes_lists_nested_keys_and_ignores_runtime_ones():
    a = preset("smoke").to_dict()
    b = json.loads(json.dumps(a))
    b["num_threads"], b["log_every"], b["objective"]["views"]["global_size"] = 2, 7, 32
    assert config_changes(a, b) == ["objective.views.global_size: 64 -> 32"]


def test_config_changes_reads_fields_added_after_a_run_at_their_default():
    wanted = preset("smoke").to_dict()
    saved = json.loads(json.dumps(wanted))
    del saved["clip_grad_mode"]  # a run recorded before the field existed
    assert config_changes(saved, wanted, TrainConfig().to_dict()) == []
    wanted["clip_grad_mode"] = "per_tensor"
    assert config_changes(saved, wanted, TrainConfig().to_dict()) == [
        "clip_grad_mode: 'global' -> 'per_tensor'"
    ]


def test_stale_temporaries_are_removed_at_the_next_start(tmp_path: Path):
    out = tmp_path / "run"
    cfg = _smoke(steps=6)
    with pytest.raises(KeyboardInterrupt):
        _interrupt(cfg, out, at_step=4)
    stale = out / ".checkpoint.pt.abc123.tmp"  # what a kill -9 during torch.save leaves
    stale.write_bytes(b"partial")
    pretrain(cfg, out, resume=True)
    assert not stale.exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 6


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path: Path):
    cfg = _smoke()
    cfg.dataset, cfg.root = "camvid", str(tmp_path / "no-such-data")
    with pytest.raises(ValueError, match="no-such-data"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unwritable_out_is_refused_up_front(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match="is a file"):
        pretrain(_smoke(), blocker / "run")


def test_every_run_file_is_known(tmp_path: Path):
    """Every file a run writes is one --overwrite clears and a new run refuses to write over."""
    cfg = _smoke()
    cfg.steps, cfg.checkpoint_every = 2, 2
    pretrain(cfg, tmp_path / "run")
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert written == set(RUN_FILES)
