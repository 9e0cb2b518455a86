"""``glare pretrain``: options, errors, and one subprocess smoke run (``--preset smoke``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glare_core.cli import main


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--preset", "--base", "--dataset", "--root", "--out", "--set", "--resume", "--steps"):
        assert opt in text, opt


def test_print_config_applies_shortcuts_and_overrides(capsys):
    code = main(
        [
            "pretrain",
            "--preset",
            "smoke",
            "--steps",
            "7",
            "--base",
            "random:test_vit",
            "--set",
            "heads.out_dim=32",
            "--set",
            "objective.lambda_local=0.5",
            "--print-config",
        ]
    )
    assert code == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["steps"] == 7 and cfg["preset"] == "smoke" and cfg["base"] == "random:test_vit"
    assert cfg["heads"]["out_dim"] == 32 and cfg["objective"]["lambda_local"] == 0.5


def test_bad_set_and_resume_without_out_are_clear_errors(capsys):
    assert main(["pretrain", "--preset", "smoke", "--set", "objective.lambda_locl=1", "--print-config"]) == 2
    assert "lambda_local" in capsys.readouterr().err  # the closest valid key is suggested
    assert main(["pretrain", "--preset", "smoke", "--resume"]) == 2
    assert "--out" in capsys.readouterr().err


def test_subprocess_smoke_run(tmp_path: Path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLARE_SMOKE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "glare_core", "pretrain", "--preset", "smoke", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done:" in proc.stdout
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "adapter.safetensors", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["trainable_params"] > 0
    # --resume reads OUT/config.json (not the default preset); on a finished run it only re-exports
    assert main(["pretrain", "--out", str(out), "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6


def test_demo_smoke_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """README's first command, ``make demo``, in its seconds-long form: both rows, telemetry, demo.json."""
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))  # feature cache out of the user's cache
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--out", str(out), "--precision", "fp32"]) == 0
    record = json.loads((out / "demo.json").read_text())
    base, glare = record["rows"]
    assert record["smoke"] and (base["model"], glare["model"]) == ("base (frozen)", "GLARE (G+L+R, adapter)")
    assert base["trainable_params"] == 0 < glare["trainable_params"]
    assert 0 < base["miou"] <= 1 and 0 < glare["miou"] <= 1 and record["pretrain"]["steps"] > 0
    assert record["export"] == "adapter_student.safetensors"
    assert (out / "pretrain" / record["export"]).exists()
    printed = capsys.readouterr().out
    assert "numbers mean nothing" in printed and "last-layer tokens moved" in printed
