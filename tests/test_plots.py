"""Result tables and figures of ``glare_core.study`` and ``glare_core.plots`` on tiny hand-written result
files (no training).

The cell JSONs and the benchmark JSON below are written in ``tmp_path`` with numbers chosen here, so every
printed mean, std, difference and factor is checked against arithmetic done by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from glare_core import plots
from glare_core.study import figures, report, stats, store

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAIN_KEYS = ("base", "dino_adapter", "dino_lora", "dino_full", "glare")


def write_cell(
    results: Path,
    row: str,
    dataset: str,
    seed: int,
    miou: float,
    per_class: dict[str, float | None] | None = None,
    knn: float | None = None,
    params: int = 0,
    minutes: float = 0.0,
    commit: str = "c0ffee",
) -> None:
    """One finished cell of the ``main`` table (the fields ``glare_core.study.store.read_cell`` requires)."""
    record = {
        "schema": 1,
        "table": "main",
        "row": row,
        "row_label": row.upper(),
        "dataset": dataset,
        "dataset_label": dataset.upper(),
        "seed": seed,
        "metrics": {
            "miou": miou,
            "pixel_acc": 0.9,
            "per_class_iou": per_class or {"road": miou, "pole": None},
            "knn_top1": knn,
            "trainable_params": params,
            "pretrain_minutes": minutes,
        },
        "config": {},
        "git_commit": commit,
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "2.x", "torch_threads": 2},
        "threads": 1,
        "started": f"2026-01-0{seed + 1}T10:00:00+00:00",
        "finished": f"2026-01-0{seed + 1}T11:00:00+00:00",
    }
    folder = results / "main" / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{row}__{dataset}__seed{seed}.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path) -> Path:
    """base and GLARE on CamVid, seeds 0 and 1 (GLARE +10 and +20 points); GLARE on IDD-Lite, seed 0."""
    write_cell(tmp_path, "base", "camvid", 0, 0.50, {"road": 0.9, "pole": 0.1}, knn=0.20)
    write_cell(tmp_path, "base", "camvid", 1, 0.52, {"road": 0.9, "pole": 0.2})
    write_cell(tmp_path, "glare", "camvid", 0, 0.60, {"road": 0.8, "pole": 0.3}, 0.15, 600_000, 2.0)
    write_cell(tmp_path, "glare", "camvid", 1, 0.72, {"road": 1.0, "pole": 0.4}, None, 600_000, 4.0, "beef")
    write_cell(tmp_path, "glare", "idd_lite367", 0, 0.40, knn=0.18, params=600_000, minutes=3.0)
    return tmp_path


def test_table_status_lists_done_pending_stale_commits_and_machines(results):
    status = report.table_status(results, "main")
    assert status["total"] == 30
    assert status["done"] == [
        "base__camvid__seed0",
        "glare__camvid__seed0",
        "glare__idd_lite367__seed0",
        "base__camvid__seed1",
        "glare__camvid__seed1",
    ]  # run order: seeds outermost, then datasets, then rows
    assert len(status["pending"]) == 25 and "dino_adapter__camvid__seed0" in status["pending"]
    assert status["commits"] == {"c0ffee": 4, "beef": 1}
    assert status["machines"] == {"test cpu, 2 cores, torch 2.x, 1 thread(s)": 5}
    assert status["first_start"].startswith("2026-01-01") and status["last_finish"].startswith("2026-01-02")
    # The hand-written cells record no probe protocol, so every one of them is stale against the definition.
    assert set(status["stale"]) == set(status["done"]) and status["smoke"] == []
    with pytest.raises(ValueError, match="no cells"):
        report.table_status(results, "efficiency")


def test_results_markdown_shows_every_row_with_n_and_pending(results):
    text = report.results_markdown(results, "main")
    lines = text.splitlines()
    assert len(lines) == 2 + len(MAIN_KEYS)
    glare = next(line for line in lines if line.startswith("| GLARE"))
    cells = [c.strip() for c in glare.strip("|").split("|")]
    # CamVid: mean 66.0, sample std of (60, 72) = 8.485...; IDD-Lite: one seed, no std
    assert cells[1] == "66.0 ± 8.5 (n=2)" and cells[2] == "40.0 (n=1)"
    assert cells[3] == "15.0" and cells[4] == "18.0"  # k-NN: only the cells that measured it
    assert cells[5] == "0.60 M" and cells[6] == "3.0 ± 1.0" and cells[7] == "2/3, 1/3"
    base = [c.strip() for c in lines[2].strip("|").split("|")]
    assert base[0] == "base (no continual pre-training)" and base[2] == "pending"
    assert base[6] == "0 (no pre-training)" and base[7] == "2/3, 0/3"
    dino = [c.strip() for c in lines[3].strip("|").split("|")]
    assert dino[1:5] == ["pending"] * 4 and dino[7] == "0/3, 0/3"


def test_paired_difference_uses_only_seeds_both_rows_finished(results):
    d = stats.paired_difference(results, "main", "glare", "base", "camvid")
    assert d["seeds"] == [0, 1] and d["n"] == 2
    assert d["diffs"] == pytest.approx([0.10, 0.20])
    assert d["mean"] == pytest.approx(0.15) and d["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert d["row_label"] == "GLARE" and d["dataset_label"] == "CAMVID"
    knn = stats.paired_difference(results, "main", "glare", "base", "camvid", metric="knn_top1")
    assert knn["seeds"] == [0] and knn["mean"] == pytest.approx(-0.05) and knn["std"] is None
    none = stats.paired_difference(results, "main", "glare", "base", "idd_lite367")
    assert none["n"] == 0 and none["mean"] is None and none["diffs"] == []


def test_t_interval_of_the_paired_differences(results):
    with pytest.raises(ValueError, match="at least two values"):
        stats.t_interval([0.3, None])  # one seed: no spread to scale the interval by
    pytest.importorskip("scipy")
    from scipy.stats import t

    # the quantiles chapter 9 once typed in by hand, now from scipy
    assert [round(float(t.ppf(0.975, df)), 2) for df in (1, 2, 3, 4)] == [12.71, 4.30, 3.18, 2.78]
    d = stats.paired_difference(results, "main", "glare", "base", "camvid")  # +0.10, +0.20
    half = 12.7062047 * 0.0707107 / 2**0.5  # t(0.975, 1 df) * std / sqrt(n)
    assert stats.t_interval(d["diffs"]) == pytest.approx((0.15 - half, 0.15 + half), rel=1e-5)
    # 1 df at 50 %: the 75 % quantile of t is 1, so the half-width is std / sqrt(2) = 0.05
    assert stats.t_interval(d["diffs"], confidence=0.5) == pytest.approx((0.10, 0.20))


def test_comparison_lines_say_only_what_the_cells_show(results):
    lines = report.comparison_lines(results, "main", pairs=[("glare", "base")])
    assert len(lines) == 2  # one per dataset of the table
    assert lines[0] == (
        "GLARE (G+L+R), adapter - base (no continual pre-training) on CamVid: +15.00 mIoU points "
        "(2 seeds; per seed +10.00, +20.00; std 7.07; positive in 2 of 2)"
    )
    assert lines[1].endswith("not measured yet (no seed with both cells finished)")
    (knn,) = report.comparison_lines(results, "main", pairs=[("glare", "base")], metric="knn_top1")[:1]
    assert "-5.00 k-NN top-1 points (1 seed, seed 0: no seed-to-seed spread" in knn


def test_per_class_difference_bars(results):
    fig = figures.per_class_difference_bars(results, "main", "camvid", "glare", "base")
    heights = [p.get_height() for p in fig.axes[0].patches]
    # road: (-10 + 10) / 2 = 0; pole: (20 + 20) / 2 = 20
    assert heights == pytest.approx([0.0, 20.0])
    assert "seeds 0, 1" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match="no seed with both"):
        figures.per_class_difference_bars(results, "main", "idd_lite367", "glare", "base")


def test_qualitative_figure_titles_report_pixel_accuracy():
    label = np.array([[0, 1], [1, 255]])
    good, half = np.array([[0, 1], [1, 0]]), torch.tensor([[0, 0], [1, 1]])
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    fig = plots.qualitative_figure(
        [image, image], [label, label], {"base": [good, half], "GLARE": [half, good]}, [(0, 0, 0), (9, 9, 9)],
        ["a", "b"], titles=["one", "two"],
    )  # fmt: skip
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 2 * 4
    assert titles[:4] == ["one", "ground truth", "base: 100.0 % px correct", "GLARE: 66.7 % px correct"]
    assert titles[6:] == ["base: 66.7 % px correct", "GLARE: 100.0 % px correct"]
    plt.close(fig)
    fig = plots.qualitative_figure(
        [image], [label], {"base": [half], "GLARE": [good]}, [(0, 0, 0), (9, 9, 9)], ["a", "b"],
        changes=("base", "GLARE"),
    )  # fmt: skip
    assert len(fig.axes) == 5  # one scored pixel of three fixed (top right), none broken
    assert fig.axes[-1].get_title() == "base -> GLARE: fixed 33.3 %, broken 0.0 %"
    change = fig.axes[-1].get_images()[0].get_array()
    assert np.allclose(change[0, 1], (0.1, 0.65, 0.2)) and np.allclose(change[1, 1], (0.7, 0.7, 0.7))
    plt.close(fig)


def bench_json(tmp_path: Path) -> dict:
    """A benchmark result: GLARE bf16 2 s/step, naive fp32 5 s/step, batch 4, bf16 peak 2x the fp32 one."""
    variants = {}
    for name, precision, seconds, flops in (
        ("glare", "bf16", 2.0, 100e9),
        ("dino_only", "bf16", 1.8, 90e9),
        ("naive_fp32", "fp32", 5.0, 80e9),
    ):
        peak = {"bf16": 100e9, "fp32": 50e9}
        variants[name] = {
            "precision": precision,
            "seconds_per_step": seconds,
            "images_per_s": 4 / seconds,
            "flops_per_step": flops,
            "peak_memory_mb": 1000.0,
            "achieved_flops": flops / seconds,
            "fraction_of_bf16_matmul_peak": flops / seconds / peak["bf16"],
            "fraction_of_own_precision_matmul_peak": flops / seconds / peak[precision],
        }
    bench = {
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "2.x"},
        "batch_size": 4,
        "image_size": 224,
        "variants": variants,
        "matmul_flops": {"bf16": 100e9, "fp32": 50e9},
        "goals": {"speedup_vs_naive_fp32": {"value": 2.5, "goal": ">= 2.5", "met": True}},
    }
    (tmp_path / "efficiency").mkdir(parents=True)
    (tmp_path / "efficiency" / "bench.json").write_text(json.dumps(bench))
    return bench


def test_speedup_decomposition_factors_the_measured_speedup(tmp_path):
    bench = bench_json(tmp_path)
    d = stats.speedup_decomposition(store.read_bench(tmp_path))
    assert d["speedup"] == pytest.approx(2.5)
    assert d["peak_ratio"] == pytest.approx(2.0) and d["flops_ratio"] == pytest.approx(0.8)
    # own-precision efficiency: GLARE 50e9 / 100e9 = 0.5, naive 16e9 / 50e9 = 0.32
    assert d["efficiency_fast"] == pytest.approx(0.5) and d["efficiency_slow"] == pytest.approx(0.32)
    assert d["product"] == pytest.approx(d["speedup"])
    assert d["required_efficiency_fast"] == pytest.approx(0.5)  # the target 2.5 is met exactly
    assert d["bound_at_full_peak"] == pytest.approx(5.0)
    assert d["at_equal_efficiency"] == pytest.approx(1.6)  # 2.0 x 0.8: 2.5 needs e_fast > e_slow
    assert stats.speedup_decomposition(bench, target=5.0)["required_efficiency_fast"] == pytest.approx(1.0)


def test_efficiency_table_and_bars_read_the_json(tmp_path):
    bench_json(tmp_path)
    text = report.efficiency_markdown(tmp_path)
    assert "| glare | bf16 | 2.00 | 2.00 | 1000 | 50 | 50 % |" in text
    assert "| speedup_vs_naive_fp32 | 2.500 | >= 2.5 | yes |" in text
    fig = figures.efficiency_bars(tmp_path)
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([2.0, 4 / 1.8, 0.8])
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="glare experiment efficiency"):
        store.read_bench(tmp_path / "nowhere")


def test_machines_table_has_one_row_per_benchmark_file(tmp_path):
    bench = bench_json(tmp_path)  # an earlier-benchmark file: glare (bf16) and naive_fp32, no auto
    # the current benchmark on a processor without fast bf16: auto picks fp32, forced bf16 is 10x slower
    new = json.loads(json.dumps(bench))
    new["step"] = "glare_core.train.train_step"
    new["machine"].update(
        cpu="new cpu",
        cpu_capability="AVX512",
        torch_threads=1,
        kernel_limits={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    )
    new["matmul_flops"] = {"bf16": 5e9, "fp32": 50e9, "n": 1024}
    new["auto_precision"] = {"name": "fp32", "reason": "bf16 matmul 5 vs fp32 50 GFLOP/s (0.10x), < 2x"}
    fp32 = {**bench["variants"]["naive_fp32"], "fraction_of_own_precision_matmul_peak": 0.32}
    new["variants"] = {
        "glare": fp32,
        "glare_bf16": {**bench["variants"]["glare"], "images_per_s": 0.08},
        "glare_fp32": fp32,
    }
    (tmp_path / "efficiency" / "bench_older.json").write_text(json.dumps(bench))
    (tmp_path / "efficiency" / "bench.json").write_text(json.dumps(new))
    assert store.bench_files(tmp_path) == ["bench.json", "bench_older.json"]
    assert store.read_bench(tmp_path, "bench_older.json")["machine"]["cpu"] == "test cpu"
    assert not store.bench_is_earlier(new) and store.bench_is_earlier(bench)
    assert store.bf16_variant(new) == "glare_bf16" and store.bf16_variant(bench) == "glare"
    lines = report.machines_markdown(tmp_path).splitlines()
    assert len(lines) == 4  # header, rule, two files, the current one first
    # auto = fp32: 0.80 img/s, 10x forced bf16's 0.08 and 1.00x the fp32 step; 32 % of the fp32 peak
    assert lines[2] == (
        "| `bench.json` | train_step | new cpu | AVX512 limited to AVX2 | 1 | 5 / 50 (1024) "
        "| fp32 (auto) | 0.80 / 0.08 / 0.80 | 10.00 | 1.00 | 32 % |"
    )
    # earlier file: glare is the bf16 step (fixed), 2.00 img/s over naive fp32's 0.80; 50 % of the bf16 peak
    assert lines[3] == (
        "| `bench_older.json` | earlier (re-implemented step) | test cpu | ? | ? | 100 / 50 (?) "
        "| bf16 (fixed) | 2.00 / 2.00 / 0.80 | 1.00 | 2.50 | 50 % |"
    )
    text = report.efficiency_markdown(tmp_path)
    assert "(torch CPU capability AVX512 limited to AVX2), 2 cores, torch threads: 1" in text
    assert "`auto` picks fp32 here: bf16 matmul 5 vs fp32 50 GFLOP/s (0.10x), < 2x." in text
