"""Fault family 1, code execution: no file a user can be handed runs code when it is loaded.

Every checkpoint and stored result is read with ``torch.load(weights_only=True)``; a file carrying a pickle
``__reduce__`` payload is refused with an error that names it, and the payload never runs.
"""

from __future__ import annotations

import pathlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from glare_core.cli import main
from glare_core.config import preset
from glare_core.errors import CheckpointError
from glare_core.rng import rng_state, set_rng_state
from glare_core.runs import load_checkpoint, safe_torch_load
from glare_core.train import pretrain


class Payload:
    """Unpickling this object writes ``marker``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "code ran"))


def _poisoned_run(folder: Path, marker: Path) -> Path:
    """A run folder whose checkpoint looks right but carries the payload in its RNG states."""
    folder.mkdir(parents=True)
    cfg = preset("smoke")
    cfg.save(folder / "config.json")
    ckpt = {"step": 3, "model": {}, "optimizer": {}, "rng": [Payload(marker)], "config": cfg.to_dict()}
    torch.save(ckpt, folder / "checkpoint.pt")
    return folder / "checkpoint.pt"


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path):
    marker = tmp_path / "marker"
    path = _poisoned_run(tmp_path / "run", marker)
    with pytest.raises(CheckpointError, match="refused") as err:
        pretrain(preset("smoke"), tmp_path / "run", resume=True)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_cli_resume_of_a_poisoned_checkpoint_is_a_clear_error(tmp_path: Path, capsys):
    marker = tmp_path / "marker"
    path = _poisoned_run(tmp_path / "run", marker)
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert not marker.exists()


def test_book_result_loader_refuses_a_payload(tmp_path: Path):
    from glare_core.notebook import load_result

    marker = tmp_path / "marker"
    path = tmp_path / "results" / "probe" / "head.pt"
    path.parent.mkdir(parents=True)
    torch.save({"weight": torch.zeros(2), "extra": Payload(marker)}, path)
    with pytest.raises(ValueError, match=str(path)):
        load_result(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot read"),  # empty (killed before the first byte)
        (b"not a checkpoint at all", "cannot read"),
        (None, "missing"),  # a valid torch file without the training state
    ],
)
def test_corrupt_checkpoints_name_the_file(tmp_path: Path, content, message):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save({"weights": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint_names_the_file(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "model": {"w": torch.randn(1000)}, "optimizer": {}, "rng": []}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot read") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_rng_state_is_plain_data_and_round_trips(tmp_path: Path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # a cached Gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    want = (torch.rand(3), np.random.normal(size=3), [random.gauss(0, 1) for _ in range(3)])
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.normal(size=3), [random.gauss(0, 1) for _ in range(3)])
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_older_checkpoints_with_numpy_state_still_load(tmp_path: Path):
    """Checkpoints written before the RNG states became tensors hold numpy arrays and scalars; numpy's array
    reconstruction is allowed (it calls nothing else), so they load safely and resume the same stream."""
    np.random.seed(5)
    legacy = {"numpy": np.random.get_state(), "python": random.getstate(), "lr": np.float64(0.1)}
    want = np.random.rand(2)
    torch.save(legacy, tmp_path / "old.pt")
    loaded = safe_torch_load(tmp_path / "old.pt")
    np.random.set_state(loaded["numpy"])
    assert np.array_equal(np.random.rand(2), want) and loaded["lr"] == 0.1


def test_a_real_checkpoint_loads_with_weights_only(tmp_path: Path):
    cfg = preset("smoke")
    cfg.steps = 2
    pretrain(cfg, tmp_path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "checkpoint.pt") == []
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2
