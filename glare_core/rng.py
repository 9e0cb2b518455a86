"""Random-number generators: one seed for all of them, and their exact state for resuming a run.

:func:`seed_everything` is what the training loop and every chapter's ``setup()`` call;
:func:`rng_state` / :func:`set_rng_state` are what a checkpoint keeps so that a resumed run draws the very
views an uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (``torch.manual_seed`` seeds every CUDA device too)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Random-number states of torch (CPU and CUDA), numpy and Python, as tensors and plain data.

    Nothing in it needs pickle (numpy's Mersenne-Twister keys and Python's become int64 tensors), so a
    checkpoint that holds it loads with ``torch.load(weights_only=True)``.
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),  # (624,) MT19937 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),  # (625,) MT19937 words and position
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also the older layout with numpy's own state tuple)."""
    torch.set_rng_state(state["torch"])
    np_state, py_state = state["numpy"], state["python"]
    if isinstance(np_state, dict):
        keys = np_state["keys"].numpy().astype(np.uint32)
        np_state = ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    np.random.set_state(np_state)
    if isinstance(py_state, dict):
        internal = tuple(int(x) for x in py_state["internal"].tolist())
        py_state = (py_state["version"], internal, py_state["gauss_next"])
    random.setstate(py_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
