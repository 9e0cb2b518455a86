"""Packaging: pyproject.toml and environment.yml agree; loose bounds; Jupyter Book pinned to 1.x."""

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    project = _pyproject()
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) == wanted


def test_runtime_requirements_are_loose_lower_bounds():
    """A Colab install must never replace torch, torchvision or numpy: no upper bounds, no pins."""
    for req in _pyproject()["dependencies"]:
        assert "<" not in req and "==" not in req, req
    names = {_name(r) for r in _pyproject()["dependencies"]}
    assert {"torch", "timm", "einops", "datasets", "safetensors", "numpy", "pillow"} <= names
    assert "torchvision" not in names  # timm brings it; never re-pinned here


def test_jupyter_book_is_pinned_below_2():
    extras = _pyproject()["optional-dependencies"]
    for extra in ("book", "test"):
        (req,) = [r for r in extras[extra] if _name(r) == "jupyter-book"]
        assert "<2" in req and ">=1.0.4" in req


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
