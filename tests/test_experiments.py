"""The study: tables as data, resumable cells, aggregation and the report (smoke scale).

A tiny table (2 rows x 1 synthetic dataset x 2 seeds, ``random:test_vit``) runs end to end into
``tmp_path``; re-running it must not pre-train or evaluate anything; an interrupted pre-training resumes from
its checkpoint; ``report.write_report`` rebuilds CSV / markdown from cell JSONs alone, with mean and std
checked against numbers written here; bad result files and foreign run folders give errors naming them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from glare_core.cli import main as cli_main
from glare_core.study import configs, figures, report, runner, stats, store, tables, timing


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))  # feature cache out of the user's cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GLARE_SMOKE", raising=False)


def tiny_table(rows=None, seeds=(0, 1)) -> tables.Table:
    rows = rows or (
        tables.Row("base", "base", pretrain=False),
        tables.Row("glare", "GLARE", ("steps=2", "checkpoint_every=2")),
    )
    return tables.Table(
        "tiny",
        "tiny smoke table",
        rows=rows,
        datasets=(
            tables.DatasetSpec("syn", "synthetic", "synthetic", probe_size=(64, 48), num_images=(6, 3)),
        ),
        seeds=seeds,
        preset="smoke",
        probe={"smoke": True, "steps": 8, "warmup_steps": 1},
    )


def run(table, tmp_path: Path, **kw):
    return runner.run_table(table, tmp_path / "results", tmp_path / "runs", smoke=True, **kw)


# ------------------------------------------------------------------------------------------- end to end
def test_tiny_table_end_to_end_then_rerun_skips(tmp_path, monkeypatch):
    table = tiny_table()
    records = run(table, tmp_path, figures=False)  # figures: test_report_rebuilds_tables_from_json_alone
    assert len(records) == 4
    results = tmp_path / "results" / "tiny"
    files = sorted(p.name for p in (results / "cells").glob("*.json"))
    assert files == [f"{r}__syn__seed{s}.json" for r in ("base", "glare") for s in (0, 1)]
    cell = store.read_cell(results / "cells" / "glare__syn__seed1.json")
    assert cell["seed"] == 1 and cell["config"]["train"]["seed"] == 1 and cell["config"]["probe"]["seed"] == 1
    assert cell["config"]["train"]["steps"] == 2 and cell["pretrain"]["mode"] == "new"
    assert cell["git_commit"] and cell["machine"]["cpu"] and cell["machine"]["torch"]
    assert cell["wall_time_s"] > 0 and 0 <= cell["metrics"]["miou"] <= 1
    assert cell["metrics"]["trainable_params"] > 0 and cell["metrics"]["pretrain_minutes"] > 0
    base = store.read_cell(results / "cells" / "base__syn__seed0.json")
    assert base["metrics"]["trainable_params"] == 0 and base["config"]["train"] is None
    with open(results / "cells.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (results / "summary.md").read_text().count("\n| ") == 4  # header, rule, 2 rows
    timings = json.loads((tmp_path / "results" / timing.TIMINGS_FILE).read_text())
    assert timings["pretrain"] and timings["probe"] and timings["features"]

    # Second run: every cell has its JSON, so nothing may pre-train or evaluate.
    def boom(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(runner, "run_cell", boom)
    monkeypatch.setattr("glare_core.train.pretrain", boom)
    monkeypatch.setattr("glare_core.evaluation.evaluate_backbone", boom)
    assert run(table, tmp_path) == []

    # The dry run sees them done and current; a changed definition marks them stale (still skipped).
    plan = timing.plan(table, tmp_path / "results", smoke=True)
    assert "[done] glare__syn__seed1\n" in plan + "\n" and "STALE" not in plan
    changed = dataclasses.replace(table, probe={**table.probe, "lr": 0.5})
    assert "STALE: probe lr=" in timing.plan(changed, tmp_path / "results", smoke=True)
    assert run(changed, tmp_path) == []
    # A cell recorded before a probe field existed is current when the field's default reproduces it ...
    path = results / "cells" / "base__syn__seed0.json"
    record = json.loads(path.read_text())
    for key in ("inference", "slide_scale", "slide_stride"):
        record["config"]["probe"].pop(key)
    path.write_text(json.dumps(record))
    cell = next(c for c in table.cells() if c.key == "base__syn__seed0")
    assert store.stale_reason(cell, tmp_path / "results", smoke=True) is None
    # ... and stale when the table asks for another value of it.
    sliding = dataclasses.replace(table, probe={**table.probe, "inference": "slide"})
    cell = next(c for c in sliding.cells() if c.key == "base__syn__seed0")
    assert "inference='resize'" in store.stale_reason(cell, tmp_path / "results", smoke=True)


def test_interrupted_pretraining_resumes(tmp_path, monkeypatch):
    import glare_core.train as train

    table = tiny_table(rows=(tables.Row("glare", "GLARE", ("steps=4", "checkpoint_every=2")),), seeds=(0,))
    real_append = train.append_jsonl

    def stop_at_step_3(path, record):
        if record["step"] == 3:
            raise KeyboardInterrupt  # after the step-2 checkpoint
        real_append(path, record)

    monkeypatch.setattr(train, "append_jsonl", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(table, tmp_path)
    cell = table.cells()[0]
    assert not cell.result_path(tmp_path / "results").exists()
    assert (cell.run_dir(tmp_path / "runs") / "checkpoint.pt").exists()

    monkeypatch.setattr(train, "append_jsonl", real_append)
    calls = []
    real_pretrain = train.pretrain

    def spy(cfg, out_dir, resume=False):
        calls.append(resume)
        return real_pretrain(cfg, out_dir, resume=resume)

    monkeypatch.setattr(train, "pretrain", spy)
    (record,) = run(table, tmp_path)
    assert calls == [True] and record["pretrain"]["mode"] == "resumed"
    assert record["pretrain"]["steps_timed"] == 4  # metrics.jsonl holds every step once
    assert record["pretrain"]["summary"]["start_step"] == 2


def test_full_finetuning_and_lora_rows_export_and_evaluate(tmp_path):
    rows = (
        tables.Row("full", "full", ("tuning=full", "steps=2")),
        tables.Row("lora", "LoRA", ("tuning=lora", "rank=2", "steps=2")),
    )
    records = run(tiny_table(rows=rows, seeds=(0,)), tmp_path, figures=False)
    full, lora = (r["metrics"]["trainable_params"] for r in records)
    assert full > lora > 0


# ------------------------------------------------------------------------------------------- report
def write_cell(folder: Path, row: str, seed: int, miou: float, per_class: dict, knn: float | None = None):
    record = {
        "schema": 1,
        "table": "hand",
        "row": row,
        "row_label": row.upper(),
        "dataset": "camvid",
        "dataset_label": "CamVid",
        "seed": seed,
        "metrics": {
            "miou": miou,
            "pixel_acc": 0.9,
            "per_class_iou": per_class,
            "knn_top1": knn,
            "trainable_params": 1000,
            "pretrain_minutes": 2.0,
        },
        "config": {},
        "git_commit": "abc",
        "machine": {"cpu": "test cpu"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{row}__camvid__seed{seed}.json").write_text(json.dumps(record))


def test_report_rebuilds_tables_from_json_alone(tmp_path):
    cells = tmp_path / "hand" / "cells"
    for seed, miou in enumerate((0.5, 0.6, 0.7)):
        write_cell(cells, "glare", seed, miou, {"road": miou + 0.1, "sky": None}, knn=0.2 + 0.1 * seed)
    write_cell(cells, "base", 0, 0.4, {"road": 0.3, "sky": 0.8})
    written = report.write_report(tmp_path) | figures.write_figures(tmp_path)
    assert {"hand/summary.csv", "hand/summary.md", "hand/cells.csv", "hand/per_class_iou.csv"} <= set(written)
    with open(tmp_path / "hand" / "summary.csv") as f:
        summary = {r["row"]: r for r in csv.DictReader(f)}
    assert float(summary["glare"]["miou_mean"]) == pytest.approx(0.6)
    assert float(summary["glare"]["miou_std"]) == pytest.approx(0.1)  # sample std (n - 1) of 0.5, 0.6, 0.7
    assert float(summary["glare"]["knn_top1_std"]) == pytest.approx(0.1)
    assert summary["base"]["miou_std"] == "" and summary["glare"]["n"] == "3"
    md = (tmp_path / "hand" / "summary.md").read_text()
    assert "| GLARE | 60.0 ± 10.0 |" in md and "| BASE | 40.0 |" in md
    with open(tmp_path / "hand" / "per_class_iou.csv") as f:
        per_class = {(r["row"], r["class"]): r["iou_mean"] for r in csv.DictReader(f)}
    assert float(per_class[("glare", "road")]) == pytest.approx(0.7) and per_class[("glare", "sky")] == ""
    assert (tmp_path / "hand" / "hand_miou.png").stat().st_size > 0
    assert (tmp_path / "hand" / "per_class_iou_camvid.png").exists()


def test_mean_std_and_markdown_helpers():
    mean, std, n = stats.mean_std([1.0, None, 2.0, 4.0])
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert stats.mean_std([0.3]) == (0.3, None, 1) and stats.mean_std([None]) == (None, None, 0)
    assert report.fmt_mean_std(0.5512, 0.0123, 100) == "55.1 ± 1.2" and report.fmt_mean_std(None, None) == "-"
    table = report.markdown_table(["a", "b"], [["x|y", None]])
    assert table.splitlines() == ["| a | b |", "| :--- | ---: |", "| x\\|y | - |"]
    with pytest.raises(ValueError):
        report.markdown_table(["a", "b"], [["only one"]])


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"schema": 1, "table": "hand"}), "missing field"),
    ],
)
def test_bad_result_file_is_named(tmp_path, content, match):
    write_cell(tmp_path / "hand" / "cells", "glare", 0, 0.5, {})
    bad = tmp_path / "hand" / "cells" / "broken__camvid__seed0.json"
    bad.write_text(content)
    with pytest.raises(store.ResultFileError, match=match) as err:
        report.write_report(tmp_path)
    assert str(bad) in str(err.value) and "Fix:" in str(err.value)


def test_misnamed_result_file(tmp_path):
    write_cell(tmp_path / "hand" / "cells", "glare", 0, 0.5, {})
    path = tmp_path / "hand" / "cells" / "glare__camvid__seed0.json"
    path.rename(path.with_name("glare__camvid__seed7.json"))
    with pytest.raises(store.ResultFileError, match="seed7"):
        store.load_cells(tmp_path, "hand")


# ------------------------------------------------------------------------------------------- definitions
def test_table_definitions():
    main = tables.get_table("main")
    assert len(main.cells()) == 5 * 2 * 3 and main.knn
    assert [c.knn for c in main.cells()] == [c.seed == 0 for c in main.cells()]
    assert [r.name for r in main.rows] == ["base", "dino_adapter", "dino_lora", "dino_full", "glare"]
    keys = [c.key for c in main.cells()]
    assert len(set(keys)) == len(keys)
    for cell in main.cells():
        if cell.row.pretrain:
            cfg = configs.train_config(cell)
            assert cfg.steps == 100 and cfg.objective.views.global_size == 112 and cfg.seed == cell.seed
            assert cfg.limit_seed == 0
            if cell.dataset.name == "idd_lite367":
                assert cfg.dataset == "idd_lite" and cfg.limit == 367
            dino_only = cell.row.name.startswith("dino")
            assert cfg.objective.use_local is not dino_only and cfg.objective.use_regional is not dino_only
        assert configs.probe_config(cell).seed == cell.seed and configs.probe_config(cell).label_scale == 0.5
    tuning = {c.row.name: configs.train_config(c).tuning for c in main.cells()[:5] if c.row.pretrain}
    assert tuning == {"dino_adapter": "adapter", "dino_lora": "lora", "dino_full": "full", "glare": "adapter"}

    abl = tables.get_table("ablations")
    assert len(abl.cells()) == 12 and abl.datasets == (tables.CAMVID,)
    for cell in abl.cells():
        if cell.row.data_fraction == 1.0:
            configs.train_config(cell)  # every override is a valid config key and value

    with pytest.raises(ValueError, match="unknown table"):
        tables.get_table("nope")


@pytest.mark.parametrize(
    "name, changed",
    [
        ("scale", {("objective", "views", "global_size"): (224, 112), ("load_size",): (336, 224)}),
        ("steps", {("steps",): (400, 100)}),
    ],
)
def test_investigation_tables_change_only_their_setting_of_the_main_rows(name, changed):
    """Each cell is the main table's CamVid cell of the same row and seed with only the table's setting
    changed: every other training setting and the probe protocol are identical, so the tables pair."""
    main, table = tables.get_table("main"), tables.get_table(name)
    assert [c.key for c in table.cells()] == [
        f"{r}__camvid__seed{s}" for s in (0, 1, 2) for r in ("dino_adapter", "glare")
    ]
    for cell in table.cells():
        twin = tables.Cell(main, main.row(cell.row.name), tables.CAMVID, cell.seed)
        ours, theirs = configs.train_config(cell).to_dict(), configs.train_config(twin).to_dict()
        for keys, values in changed.items():
            *parents, leaf = keys
            a, b = ours, theirs
            for k in parents:
                a, b = a[k], b[k]
            assert (a.pop(leaf), b.pop(leaf)) == values
        assert ours == theirs
        assert configs.probe_config(cell) == configs.probe_config(twin)


def test_smoke_table_maps_every_cell():
    smoke = tables.smoke_table(tables.get_table("ablations"))
    assert [c.key for c in smoke.cells()] == [c.key for c in tables.get_table("ablations").cells()]
    cell = next(c for c in smoke.cells() if c.row.name == "data25")
    cfg = configs.train_config(cell, smoke=True)
    assert cfg.base == "random:test_vit" and cfg.dataset == "synthetic" and cfg.limit == 4


def test_cli_list_dry_run_and_report(tmp_path, capsys):
    results = tmp_path / "results"
    assert cli_main(["experiment", "list", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "main:" in out and "[ ] glare__idd_lite367__seed2" in out
    assert "neighbours:" in out and "[ ] ssr_glare__camvid__seed2" in out and "18 cells, 0 done" in out
    assert cli_main(["experiment", "main", "--dry-run", "--results", str(results)]) == 0
    assert "UNMEASURED" in capsys.readouterr().out  # no timings recorded in this folder
    runs = ["--runs", str(tmp_path / "runs")]
    assert cli_main(["experiment", "neighbours", "--dry-run", "--results", str(results), *runs]) == 0
    out = capsys.readouterr().out
    assert "[todo] pipa_glare__camvid__seed1" in out and "UNMEASURED: decoder step" in out
    write_cell(tmp_path / "results" / "hand" / "cells", "glare", 0, 0.5, {"road": 0.5})
    assert cli_main(["experiment", "report", "--results", str(results), "--no-figures"]) == 0
    assert (results / "hand" / "summary.md").exists()


def test_estimate_uses_recorded_timings(tmp_path):
    table = tiny_table(seeds=(0,))
    cell = next(c for c in table.cells() if c.row.pretrain)
    key = configs.cost_key(configs.train_config(cell, smoke=True))
    timing.record_timing(tmp_path, "pretrain", key, 2.0, "test")
    probe = configs.probe_config(cell).to_dict()
    timing.record_timing(tmp_path, "probe", timing.probe_timing_key("syn", probe), 30.0, "test")
    assert (
        "probe features"
        in timing.estimate_cell(cell, timing.read_timings(tmp_path), smoke=True)["unmeasured"]
    )
    timing.record_timing(tmp_path, "features", timing.features_timing_key("syn", probe), 5.0, "test")
    est = timing.estimate_cell(cell, timing.read_timings(tmp_path), smoke=True)
    assert est["total"] == pytest.approx(2 * 2.0 + 30.0 + 5.0) and not est["unmeasured"]


def test_foreign_run_folder_is_refused(tmp_path):
    table = tiny_table(rows=(tables.Row("glare", "GLARE", ("steps=2",)),), seeds=(0,))
    cell = table.cells()[0]
    run_dir = cell.run_dir(tmp_path / "runs")
    run_dir.mkdir(parents=True)
    cfg = configs.train_config(cell, smoke=True)
    cfg.num_threads = 2  # a runtime key: a run folder may be resumed with another value
    cfg.save(run_dir / "config.json")
    runner.check_run_config(run_dir, configs.train_config(cell, smoke=True))
    cfg.steps = 99  # a run folder made by another definition of this cell
    cfg.save(run_dir / "config.json")
    with pytest.raises(store.ResultFileError, match="steps") as err:
        runner.pretrain_cell(cell, tmp_path / "runs", smoke=True)
    assert str(run_dir) in str(err.value)
    assert tables.with_threads(table, 2).threads == 2
    assert configs.train_config(tables.with_threads(table, 2).cells()[0]).num_threads == 2


# ------------------------------------------------------------------------------------------- neighbours
def test_neighbours_grid_and_adapter_source():
    """Decoder / + PiPa / + SSR x {base, GLARE-adapted} x 3 seeds on CamVid; the adapted backbone of seed k is
    the main table's glare cell of seed k: same config, same run folder, same CamVid split."""
    table, main = tables.get_table("neighbours"), tables.get_table("main")
    assert table.kind == "segmentation" and table.datasets == (tables.CAMVID,) and table.seeds == (0, 1, 2)
    assert [r.name for r in table.rows] == [
        f"{m}_{b}" for b in ("base", "glare") for m in ("decoder", "pipa", "ssr")
    ]
    assert len(table.cells()) == 18 and len({c.key for c in table.cells()}) == 18
    terms = {r.name.split("_")[0]: r.terms for r in table.rows}
    assert terms == {"decoder": (), "pipa": ("pixel_contrast", "patch_consistency"), "ssr": ("ssr",)}
    for cell in table.cells():
        seg = configs.seg_config(cell)
        assert seg.size == (448, 336) and seg.seed == cell.seed and seg.label_scale == 0.5
        assert seg.steps == tables.NEIGHBOUR_SEG["steps"] and seg.hidden_dim == 256 and not seg.progress
        src = configs.adapter_cell(cell)
        if not cell.row.pretrain:
            assert src is cell
            continue
        glare = next(c for c in main.cells() if c.key == f"glare__camvid__seed{cell.seed}")
        assert src.key == glare.key and src.run_dir(Path("runs")) == glare.run_dir(Path("runs"))
        assert configs.train_config(src).to_dict() == configs.train_config(glare).to_dict()
        assert src.dataset == glare.dataset == cell.dataset
    two = tables.with_threads(table, 2)
    src = configs.adapter_cell(two.cells()[3])
    assert src.table.threads == 2 and configs.train_config(src).num_threads == 2
    smoke = tables.smoke_table(table)
    assert [c.key for c in smoke.cells()] == [c.key for c in table.cells()]
    src = configs.adapter_cell(smoke.cells()[3], smoke=True)
    assert (
        configs.train_config(src, smoke=True).base == "random:test_vit"
        and configs.seg_config(smoke.cells()[0]).steps < 100
    )


def test_inference_parameter_check_counts_the_decoder_only():
    from glare_core.neighbours.ssr import SSRFusion
    from glare_core.probe import DecoderProbe

    decoder = sum(p.numel() for p in DecoderProbe(24, 5, 16).parameters())
    ssr = sum(p.numel() for p in SSRFusion(16, 12, 4).parameters())
    check = runner.inference_parameter_check(24, 5, 16, ("ssr",), frozen_dim=12, ssr_heads=4)
    assert check["inference"] == check["decoder"] == decoder
    assert check["training_only"] == ssr and check["training_only_used_at_inference"] == 0
    pipa = runner.inference_parameter_check(24, 5, 16, tables.PIPA, pixel_dim=8, patch_dim=8)
    assert pipa["inference"] == decoder and pipa["training_only"] == 2 * (16 * 8 + 8)
    assert pipa["modules"] == {"proj_pixel": 136, "proj_patch": 136}
    assert runner.inference_parameter_check(24, 5, 16, ())["training_only"] == 0


def test_neighbours_smoke_end_to_end(tmp_path, monkeypatch):
    table = dataclasses.replace(tables.smoke_table(tables.get_table("neighbours")), seeds=(0,))
    results, runs = tmp_path / "results", tmp_path / "runs"
    records = runner.run_table(table, results, runs, smoke=True)
    assert [r["row"] for r in records] == [r.name for r in table.rows]
    by = {r["row"]: r for r in records}
    # the adapted rows share the smoke main table's glare pre-training of seed 0: trained once, then reused
    run_dir = runs / "main" / "glare__camvid__seed0"
    assert (run_dir / "adapter.safetensors").exists()
    modes = [by[f"{m}_glare"]["pretrain"]["mode"] for m in ("decoder", "pipa", "ssr")]
    assert modes == ["new", "reused", "reused"]
    assert by["ssr_glare"]["config"]["adapter_source"] == "main/glare__camvid__seed0"
    assert by["decoder_base"]["pretrain"] is None and by["decoder_base"]["metrics"]["trainable_params"] == 0
    assert by["decoder_glare"]["metrics"]["trainable_params"] > 0
    decoder_params = by["decoder_base"]["metrics"]["inference_params"]
    for r in records:
        m, check = r["metrics"], r["inference_check"]
        assert 0 <= m["miou"] <= 1 and set(m["per_class_iou"]) == set(r["evaluation"]["classes"])
        assert r["git_commit"] and r["machine"]["cpu"] and r["wall_time_s"] > 0
        assert r["config"]["segmentation"]["seed"] == 0 and r["terms"] == list(table.row(r["row"]).terms)
        # no row adds a parameter at inference: every one predicts with the decoder alone
        assert m["inference_params"] == check["inference"] == decoder_params
        assert check["training_only_used_at_inference"] == 0 and check["matches_trained_model"]
        assert (m["training_only_params"] > 0) == bool(r["terms"])
    assert "no adapter" in by["ssr_glare"]["config"]["ssr_encoder"]
    assert "itself" in by["ssr_base"]["config"]["ssr_encoder"]
    assert (
        by["ssr_base"]["inference_check"]["modules"]["ssr"]
        == by["ssr_base"]["metrics"]["training_only_params"]
    )

    folder = results / "neighbours"
    md = (folder / "summary.md").read_text()
    assert md.count("\n| ") == 5 and "| + SSR branch (training only) |" in md and " 1 / 1 |" in md
    assert (folder / "neighbours_miou.png").stat().st_size > 0 and (
        folder / "per_class_iou_camvid.png"
    ).exists()
    with open(folder / "summary.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert float(rows["pipa_glare"]["miou_mean"]) == pytest.approx(by["pipa_glare"]["metrics"]["miou"])
    assert float(rows["ssr_base"]["training_only_params_mean"]) > 0
    timings = timing.read_timings(results)
    assert len(timings["segmentation"]) == 3  # one key per term set

    # rerun: nothing runs; the plan sees every cell done and current; another protocol marks them stale
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: pytest.fail("a finished cell was run again"))
    assert runner.run_table(table, results, runs, smoke=True) == []
    plan = timing.plan(table, results, smoke=True, runs_dir=runs)
    assert plan.count("[done]") == 6 and "STALE" not in plan
    changed = dataclasses.replace(table, segmentation={"smoke": True, "steps": 7})
    assert "STALE: segmentation steps=" in timing.plan(changed, results, smoke=True, runs_dir=runs)
    written = report.write_report(results)
    assert "neighbours/summary.md" in written


def test_neighbours_plan_counts_shared_work_once(tmp_path):
    table = tables.smoke_table(tables.get_table("neighbours"))
    results = tmp_path / "results"
    cell = table.cells()[0]
    seg = configs.seg_config(cell).to_dict()
    for terms in ((), tables.PIPA, ("ssr",)):
        timing.record_timing(
            results, "segmentation", timing.segmentation_timing_key("camvid", seg, terms, 1), 0.5, "t"
        )
    timing.record_timing(results, "features", timing.features_timing_key("camvid", seg), 30.0, "t")
    src = configs.adapter_cell(table.cells()[3], smoke=True)
    timing.record_timing(
        results, "pretrain", configs.cost_key(configs.train_config(src, smoke=True)), 2.0, "t"
    )
    plan = timing.plan(table, results, smoke=True, runs_dir=tmp_path / "runs").splitlines()
    lines = {line.split()[1].rstrip(":"): line for line in plan if "[todo]" in line}
    decoder_s = 0.5 * configs.seg_config(cell).steps
    assert "~0.8 min" in lines["decoder_base__camvid__seed0"]  # 30 s features + 20 s decoder
    assert f"~{decoder_s / 60:.1f} min" in lines["pipa_base__camvid__seed0"]  # features cached by then
    steps = configs.train_config(src, smoke=True).steps
    assert f"pretrain {2.0 * steps / 60:.1f} min" in lines["decoder_glare__camvid__seed0"]
    assert "pretrain reused" in lines["pipa_glare__camvid__seed0"]
    assert "UNMEASURED" not in "\n".join(plan)


def test_busy_run_folder_is_refused(tmp_path):
    import os
    import time

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runner._refuse_busy_run(run_dir)  # empty: fine
    (run_dir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(store.ResultFileError, match="another process") as err:
        runner._refuse_busy_run(run_dir)
    assert str(run_dir) in str(err.value) and "Fix:" in str(err.value)
    old = time.time() - runner.BUSY_SECONDS - 5
    os.utime(run_dir / "metrics.jsonl", (old, old))
    runner._refuse_busy_run(run_dir)  # stale: resumable
