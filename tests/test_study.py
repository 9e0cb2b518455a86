"""The pre-registered study's tables: definitions, a smoke run of their cells (readouts from one extraction,
snapshots, transfer, per-query k-NN), and the refusal to start a confirmatory cell on uncommitted code."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from glare_core import provenance
from glare_core.errors import ProvenanceError
from glare_core.study import configs, runner, store, tables, timing


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GLARE_SMOKE", raising=False)


def test_the_study_tables_follow_the_preregistration():
    study = tables.get_table("study")
    assert [r.name for r in study.rows] == ["base", "dino_adapter", "glare"] and study.seeds == tuple(
        range(6)
    )
    assert [d.name for d in study.datasets] == ["camvid", "idd_lite367"] and len(study.cells()) == 36
    assert dict(study.readouts) == {"last": "last", "best": "9", "control": "7"}
    assert study.export == "adapter_student.safetensors" and study.preregistration.endswith(
        "PREREGISTRATION.md"
    )
    assert all(c.knn for c in study.cells()) and study.snapshots == (100, 200)
    assert study.snapshot_datasets == ("camvid",)  # as pre-registered; IDD-Lite runs save them unprobed
    for cell in study.cells()[:3]:
        assert configs.probe_config(cell).layers == "last" and configs.probe_config(cell).seed == cell.seed
        if not cell.row.pretrain:
            continue
        cfg = configs.train_config(cell)
        assert (cfg.preset, cfg.trunk_blocks, cfg.steps, cfg.num_threads) == ("cpu_trunk", 8, 300, 1)
        assert cfg.objective.patch_aug.kind == "mask_mean" and cfg.objective.region_query == "teacher"
        assert cfg.snapshot_steps == (100, 200) and cfg.seed == cell.seed and cfg.split == "train"
        dino_only = cell.row.name == "dino_adapter"
        assert cfg.objective.use_local is not dino_only and cfg.objective.use_regional is not dino_only
    neighbours = tables.get_table("study_neighbours")
    assert (
        neighbours.kind == "segmentation" and neighbours.seeds == (0, 1, 2) and len(neighbours.cells()) == 18
    )
    adapted = next(c for c in neighbours.cells() if c.row.pretrain)
    source = configs.adapter_cell(adapted)
    assert source.table.name == "study" and source.row.name == "glare" and source.seed == adapted.seed
    assert neighbours.export == "adapter_student.safetensors" and neighbours.preregistration
    secondary = tables.get_table("study_secondary")
    assert secondary.seeds == (0, 1, 2) and secondary.datasets == (tables.CAMVID,)
    for cell in secondary.cells()[:4]:
        cfg = configs.train_config(cell)  # every override is a valid key and value
        assert cfg.steps == 300 and cfg.trunk_blocks == 8


def test_study_cells_smoke(tmp_path):
    """The study's cell, at smoke scale: three readouts from one extraction, the snapshots' probes, the
    transfer target's probe, and k-NN correctness per query (when Tiny-ImageNet is present)."""
    smoke = tables.smoke_table(tables.get_table("study"))
    assert smoke.preregistration == "" and smoke.snapshots == (2, 4)
    table = dataclasses.replace(smoke, seeds=(0,), knn=False)
    runner.run_table(
        table,
        tmp_path / "results",
        tmp_path / "runs",
        smoke=True,
        figures=False,
        only=["base__camvid", "glare__camvid", "glare__idd_lite367"],
    )
    cells = tmp_path / "results" / "study" / "cells"
    base = store.read_cell(cells / "base__camvid__seed0.json")
    assert list(base["readouts"]) == ["last", "best", "control"] and "snapshots" not in base
    assert base["metrics"]["miou"] == base["readouts"]["last"]["miou"]
    assert set(store.read_cell(cells / "glare__camvid__seed0.json")["snapshots"]) == {"2", "4"}
    glare = store.read_cell(cells / "glare__idd_lite367__seed0.json")  # snapshots saved, not probed
    assert "snapshots" not in glare and set(glare["transfer"]) == {"camvid"}
    assert glare["config"]["adapter_file"] == "adapter_student.safetensors"
    run_dir = Path(glare["pretrain"]["run_dir"])
    assert (run_dir / "adapter_student_step2.safetensors").exists()
    assert glare["git_commit"] and "git_dirty" in glare
    costs = timing.study_costs(tmp_path / "results")  # the cost section of chapter 11 reads the same records
    by_arm = {(r["row"], r["dataset"]): r for r in costs["rows"]}
    assert costs["cells"] == 3 and by_arm["base", "camvid"]["pretrain"] is None
    assert by_arm["glare", "camvid"]["pretrain"] > 0 and by_arm["glare", "camvid"]["s_per_step"] > 0
    assert "| study/glare | camvid | 1 of 6 |" in timing.study_costs_markdown(costs)  # of 6 planned seeds


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "glare_core").mkdir(parents=True)
    (repo / "glare_core" / "m.py").write_text("x = 1\n")
    (repo / "PRE.md").write_text("plan\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    return repo


def test_a_confirmatory_cell_refuses_uncommitted_code(tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    state = provenance.confirmatory_code_state("PRE.md")
    assert state["git_dirty"] is False and state["preregistration_commit"] == state["git_commit"]
    (repo / "glare_core" / "m.py").write_text("x = 2\n")
    with pytest.raises(ProvenanceError, match="glare_core/ has uncommitted changes.*commit"):
        provenance.confirmatory_code_state("PRE.md")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--", "glare_core"], check=True)
    (repo / "PRE.md").write_text("plan, changed after the fact\n")
    with pytest.raises(ProvenanceError, match="PRE.md: the pre-registration is not committed"):
        provenance.confirmatory_code_state("PRE.md")
    with pytest.raises(ProvenanceError, match="not committed"):
        provenance.confirmatory_code_state("MISSING.md")


def test_power_and_holm():
    from glare_core.study.stats import holm, paired_t_mde

    # G*Power's one-sample t-test (two-tailed, alpha 0.05, power 0.8, n = 6) gives d = 1.435.
    assert paired_t_mde(1.0, 6) == pytest.approx(1.4345, abs=1e-3)
    assert paired_t_mde(0.5, 6) == pytest.approx(0.5 * 1.4345, abs=1e-3)  # linear in the noise
    assert paired_t_mde(1.0, 6, alpha=0.025) > paired_t_mde(1.0, 6) > paired_t_mde(1.0, 12)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01, then max(2 x 0.03, .)
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    with pytest.raises(ValueError, match="n >= 2"):
        paired_t_mde(1.0, 1)


BASE_CONTROL = ((5, 1), (2, 7))


def _record(row: str, dataset: str, seed: int, last: float, knn: str, control=BASE_CONTROL, **extra):
    """A minimal study cell: mIoU (fraction) at the last block, block 9 = last + 0.01, the control block's
    confusion matrix, k-NN answers per query."""
    readouts = {
        "last": {"miou": last},
        "best": {"miou": last + 0.01},
        "control": {"miou": 0.5, "confusion_matrix": [list(r) for r in control]},
    }
    return {
        "schema": 1, "table": "study", "row": row, "dataset": dataset, "seed": seed,
        "metrics": {"miou": last, "knn_top1": knn.count("1") / len(knn)},
        "readouts": readouts, "knn": {"top1_correct": knn}, "config": {"train": {"steps": 300}},
        "git_commit": "x", "machine": {}, **extra,
    }  # fmt: skip


def test_the_preregistered_analysis_on_known_numbers(tmp_path):
    import json

    from glare_core.study import analysis, store

    folder = tmp_path / "study" / "cells"
    folder.mkdir(parents=True)
    dino = [0.50, 0.52, 0.51, 0.53, 0.50, 0.52]  # base 0.50 in every seed: E1 diffs 0, 2, 1, 3, 0, 2 points
    glare = [0.52, 0.53, 0.53, 0.55, 0.51, 0.55]  # E2 diffs 2, 1, 2, 2, 1, 3 points
    for s in range(6):
        broken = (
            ((5, 1), (2, 6)) if s == 5 else BASE_CONTROL
        )  # seed 5's GLARE control block differs: reported
        cells = {
            "base": _record("base", "camvid", s, 0.50, "1100"),
            "dino_adapter": _record(
                "dino_adapter", "camvid", s, dino[s], "1110", snapshots={"100": {"miou": 0.4}}
            ),
            "glare": _record("glare", "camvid", s, glare[s], "0111", control=broken),
        }
        for row, rec in cells.items():
            (folder / f"{row}__camvid__seed{s}.json").write_text(json.dumps(rec))
    assert len(store.load_cells(tmp_path, "study")) == 18
    result = analysis.analyse(tmp_path)
    by = {r["key"]: r for r in result["endpoints"]}
    e1, e2 = by["E1"], by["E2"]
    assert e1["diffs"] == pytest.approx([0, 2, 1, 3, 0, 2]) and not e1["interim"] and e1["n"] == 6
    assert e1["mean"] == pytest.approx(4 / 3) and e2["mean"] == pytest.approx(11 / 6)
    # scipy's one-sample t-test of E1's differences: t = mean / (sd / sqrt 6)
    from scipy.stats import ttest_1samp

    p1, p2 = ttest_1samp([0, 2, 1, 3, 0, 2], 0).pvalue, ttest_1samp([2, 1, 2, 2, 1, 3], 0).pvalue
    assert e1["p"] == pytest.approx(p1) and e2["p"] == pytest.approx(p2)
    assert sorted([e1["p_holm"], e2["p_holm"]]) == pytest.approx(sorted([2 * min(p1, p2), max(p1, p2)]))
    assert e1["ci_bonferroni"][0] < e1["ci95"][0] < e1["mean"] < e1["ci95"][1] < e1["ci_bonferroni"][1]
    assert by["R1"]["n"] == 0 and by["R1"]["interim"] and "p_holm" not in by["R1"]  # no IDD-Lite cells yet
    assert by["S3"]["diffs"] == pytest.approx(e1["diffs"])  # block 9 readout
    knn = by["S14"]  # GLARE "0111" against the base "1100": gains queries 2 and 3, loses query 0
    assert knn["diffs"][0] == pytest.approx(25.0) and knn["mcnemar"]["0"] == {
        "gained": 2,
        "lost": 1,
        "p": 1.0,
    }
    assert result["control"] == {"checked": 12, "differ": ["study/glare__camvid__seed5"], "final_norm": []}
    assert "(1 unexplained: a bug)" in analysis.analysis_markdown(result)
    full = _record("dino_full", "camvid", 5, 0.5, "1100", control=((5, 1), (1, 8)))  # trains the final norm
    full["config"]["train"]["tuning"] = "full"
    (folder / "dino_full__camvid__seed5.json").write_text(json.dumps(full))
    control = analysis.analyse(tmp_path)["control"]
    assert control["final_norm"] == ["study/dino_full__camvid__seed5"] and len(control["differ"]) == 2
    assert analysis.control_reason(control).startswith(" (1 full fine-tuning cell, whose run trains")
    assert analysis.control_reason(control).endswith("; 1 unexplained: a bug)")
    odd = _record("dino_lora", "camvid", 4, 0.5, "1100", control=((5, 1), (1, 8)))
    odd["config"] = {"train": None}  # no training config: counted as a difference, not explained by the norm
    (folder / "dino_lora__camvid__seed4.json").write_text(json.dumps(odd))
    control = analysis.analyse(tmp_path)["control"]
    assert "study/dino_lora__camvid__seed4" in control["differ"] and len(control["final_norm"]) == 1
    (dose,) = result["dose_response"]
    assert dose["arm"] == "study/dino_adapter" and dose["miou_by_step"]["100"] == pytest.approx(40.0)
    assert "| E1 | DINO-only adapter - base | camvid | last | 6 of 6 |" in analysis.analysis_markdown(result)
    lines = {key: analysis.verdict(r) for key, r in by.items()}
    low, high = e1["ci95"]
    assert lines["E1"] == (
        f"E1 DINO-only adapter - base (camvid, last): +1.33 points, 95 % CI [{low:+.2f}, {high:+.2f}], "
        f"Holm p = {e1['p_holm']:.2g}: " + ("resolved" if e1["p_holm"] < 0.05 else "not resolved")
    )
    assert lines["R1"] == "R1 DINO-only adapter - base (idd_lite367): 0 of 6 seeds, no verdict yet"
    assert analysis.resolved(e2) == (e2["p_holm"] < 0.05) and not analysis.resolved({"p_holm": None})
    analysis.claim(True, "holds")
    with pytest.raises(AssertionError, match="the text says: 'E1 is resolved'"):
        analysis.claim(False, "E1 is resolved")


def test_forest_plot_draws_every_endpoint_with_an_interval():
    import matplotlib

    matplotlib.use("Agg")
    from glare_core.study.figures import forest_plot

    rows = [
        {"key": "E1", "label": "a - b", "dataset": "camvid", "value": "last", "n": 3, "interim": True,
         "diffs": [1.0, 2.0, 1.5], "mean": 1.5, "ci95": [0.3, 2.7], "ci_bonferroni": [0.0, 3.0]},
        {"key": "E2", "label": "c - a", "dataset": "camvid", "value": "last", "n": 1, "interim": True,
         "diffs": [0.5], "mean": 0.5, "ci95": None, "ci_bonferroni": None},
    ]  # fmt: skip
    ax = forest_plot(rows).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["E1 a - b (camvid, last; n=3, interim)"]


def test_secondary_and_neighbour_cells_smoke(tmp_path):
    """The study's two other tables run at smoke scale: a secondary arm (full fine-tuning) and a neighbour
    cell on the GLARE-adapted backbone, whose adapter is the ``study`` table's glare run of the same seed
    (its student export)."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    pairs = (("study_secondary", "dino_full__camvid"), ("study_neighbours", "decoder_glare__camvid"))
    for name, only in pairs:
        table = dataclasses.replace(tables.smoke_table(tables.get_table(name)), seeds=(0,))
        runner.run_table(table, results, runs, smoke=True, figures=False, only=[only])
    full = store.read_cell(results / "study_secondary" / "cells" / "dino_full__camvid__seed0.json")
    assert full["config"]["train"]["tuning"] == "full" and full["metrics"]["miou"] > 0
    seg = store.read_cell(results / "study_neighbours" / "cells" / "decoder_glare__camvid__seed0.json")
    assert Path(seg["pretrain"]["run_dir"]) == runs / "study" / "glare__camvid__seed0"
    assert seg["config"]["adapter_file"] == "adapter_student.safetensors"
    assert seg["machine"]["precision"] in ("fp32", "bf16", "fp16")  # the decoder's autocast, as resolved
    assert (runs / "study" / "glare__camvid__seed0" / "adapter_student.safetensors").exists()
