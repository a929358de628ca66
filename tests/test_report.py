"""Tests of mmmamba_bench.report on hand-written fixtures shaped like lmms-eval 0.7.3 results and write_rows output."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmmamba_bench.benchmarks import TABLE1, Headline
from mmmamba_bench.report import ReportInputError, build_report, load_paper, markdown_table
from mmmamba_bench.report.figures import plot_latency, plot_memory, save_png
from mmmamba_bench.report.paper import load_ablations, load_fig1, load_table1, load_table2
from mmmamba_bench.report.profile import compare_to_transformer, context_label, device_caption, load_profile_rows
from mmmamba_bench.report.scores import (
    headline_value,
    load_results_file,
    load_scores,
    mini_frame,
    model_label,
    percent_columns,
    render_mini,
    render_table1,
    suite_columns,
)
from mmmamba_bench.report.speed import load_speed_rows, render_speed
from mmmamba_bench.results import PROFILE_SCHEMA, SPEED_SCHEMA, ProfileRow, SpeedRow, write_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIB = 2**30
K = 1024


# ----------------------------------------------------------------------------------------------- fixtures


def lmms_results(results: dict[str, dict[str, float]], model_args: str, stamp: str) -> dict:
    """A results file the way lmms-eval 0.7.3's EvaluationTracker.save_results_aggregated writes it."""
    return {
        "results": {task: {"alias": task, **{f"{m},none": v for m, v in metrics.items()},
                           **{f"{m}_stderr,none": "N/A" for m in metrics}}
                    for task, metrics in results.items()},
        "group_subtasks": {task: [] for task in results},
        "configs": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {},
        "config": {"model": "mmmamba", "model_args": model_args, "batch_size": "1", "batch_sizes": [],
                   "device": "cuda", "limit": None},
        "git_hash": "abc1234", "date": stamp, "task_hashes": {},
        "model_source": "mmmamba", "model_name": model_args.split("pretrained=")[-1].split(",")[0],
    }


def write_results(root: Path, results: dict, model_args: str, stamp: str) -> Path:
    """Write ``<root>/<model>/<stamp>_results.json`` like lmms-eval does."""
    folder = root / "ckpt__model"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_results.json"
    path.write_text(json.dumps(lmms_results(results, model_args, stamp), indent=2))
    return path


def real_metrics(values: dict[str, float]) -> dict[str, dict[str, float]]:
    """lmms-eval ``results`` entries giving each named Table-1 column (real suite) the stored value ``v``."""
    out: dict[str, dict[str, float]] = {}
    for column, headline in suite_columns("real"):
        if column.name in values:
            for task in headline.tasks:
                out.setdefault(task, {})[headline.metric] = values[column.name]
    return out


def mini_metrics(values: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for column, headline in suite_columns("mini"):
        if column.name in values:
            for task in headline.tasks:
                out.setdefault(task, {})[headline.metric] = values[column.name]
    return out


def profile_row(model: str, kind: str, context: int, ms: float | None, baseline: str = "optimized",
                status: str = "ok", peak_gib: float | None = 5.0, floor_ms: float | None = 1.5,
                device: str = "NVIDIA H100 80GB HBM3", cap_gib: float | None = None) -> ProfileRow:
    return ProfileRow(model=model, kind=kind, context=context, device=device, dtype="bfloat16",
                      path={"attention": "sdpa", "graph": "cuda"}, baseline=baseline, status=status,
                      error="CUDA out of memory" if status == "oom" else None,
                      decode_ms_per_token=ms if status == "ok" else None,
                      peak_prefill_bytes=int(peak_gib * GIB) if peak_gib and status == "ok" else None,
                      peak_decode_bytes=int(peak_gib * 0.9 * GIB) if peak_gib and status == "ok" else None,
                      memory_cap_bytes=int(cap_gib * GIB) if cap_gib else None, floor_ms=floor_ms)


@pytest.fixture
def profile_rows() -> list[ProfileRow]:
    contexts = [1 * K, 16 * K, 103 * K, 128 * K]
    rows = []
    for c, ms, peak in zip(contexts, [55.0, 63.0, 80.0, None], [5.0, 8.0, 20.0, None]):
        rows.append(profile_row("HoVLE", "transformer", c, ms, baseline="paper", peak_gib=peak,
                                status="ok" if ms else "oom", floor_ms=1.5 + c / 1e5, cap_gib=24.0))
    for c, ms, peak in zip(contexts, [25.0, 31.0, 50.0, 60.0], [5.0, 8.0, 20.0, 23.0]):
        rows.append(profile_row("HoVLE", "transformer", c, ms, peak_gib=peak, floor_ms=1.5 + c / 1e5, cap_gib=24.0))
    for c in contexts:
        rows.append(profile_row("mmMamba-linear", "linear", c, 5.0, peak_gib=5.0, floor_ms=1.57, cap_gib=24.0))
    return rows


def speed_row(model: str = "mmMamba-linear") -> SpeedRow:
    return SpeedRow(model=model, kind="linear", device="H100", dtype="bf16", path={"graph": "cuda"},
                    visual_tokens=768, prompt_tokens=790, output_tokens=256, prefill_s=0.05, decode_s=1.0,
                    total_s=1.05, tokens_per_s=243.8)


def table_row(markdown: str, first_cells: list[str]) -> list[str]:
    """The cells of the markdown table line whose first cells are ``first_cells``."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first_cells)] == first_cells:
            return cells
    raise AssertionError(f"no row starting with {first_cells} in:\n{markdown}")


def table_lines(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("| ")]


# ----------------------------------------------------------------------------------------------- paper numbers


def test_paper_table1_loads_typed_with_nan_for_dash():
    rows = load_table1()
    assert len(rows) == 16
    by_name = {r.method: r for r in rows}
    assert list(by_name["HoVLE"].scores) == [c.name for c in TABLE1]
    assert by_name["HoVLE"].scores["MME"] == 1433.5
    assert by_name["mmMamba-hybrid"].trainable_pct == 11.2
    assert by_name["mmMamba-linear"].complexity == "linear"
    assert math.isnan(by_name["OpenFlamingo"].scores["MME"])


def test_paper_table2_fig1_and_ablations():
    t2 = {r.model: r for r in load_table2()}
    assert len(t2) == 7
    assert t2["mmMamba-linear"].tokens_per_s == 132.43 and t2["HoVLE"].total_s == 7.75
    assert t2["HoVLE"].vision is None and t2["Cobra-3.5B"].visual_tokens == 729

    fig1 = load_fig1()
    assert fig1.comparison_tokens == 103 * K
    assert fig1.ratio_for_kind("linear").speedup == 20.6
    assert fig1.ratio_for_kind("hybrid").memory_saving_pct == 60.2
    assert {(s.model, s.context, s.status) for s in fig1.context_status} == {
        ("HoVLE", "128K", "oom"), ("mmMamba-hybrid", "128K", "decodes")}

    ab = load_ablations()
    assert sorted({r.table for r in ab}) == [3, 4, 5, 6] and len(ab) == 21
    none = next(r for r in ab if r.table == 3 and r.setting == "none")
    assert all(math.isnan(v) for v in none.scores.values())
    s1 = next(r for r in ab if r.table == 3 and r.setting == "S1")
    assert s1.scores == {"MME": 969.8, "POPE": 70.6, "TQA": 13.47, "SQA-I": 40.8}
    assert load_paper().table1_row("HoVLE").scores["POPE"] == 87.6


# ----------------------------------------------------------------------------------------------- scores


def test_headline_single_mean_sum_and_scale():
    metrics = {"a": {"acc,none": 0.5, "acc_stderr,none": "N/A"}, "b": {"acc,none": 0.7}, "c": {"acc,none": 0.9}}
    assert headline_value(metrics, Headline(("a",), "acc")) == 0.5
    assert headline_value(metrics, Headline(("a",), "acc", scale=100.0)) == pytest.approx(50.0)
    assert headline_value(metrics, Headline(("a", "b", "c"), "acc", "mean", 100.0)) == pytest.approx(70.0)
    assert headline_value(metrics, Headline(("a", "b"), "acc", "sum")) == pytest.approx(1.2)
    # any missing task or metric makes the whole headline missing (not evaluated) ...
    assert headline_value(metrics, Headline(("a", "b", "zzz"), "acc", "mean")) is None
    assert headline_value(metrics, Headline(("a",), "f1")) is None
    # ... but a headline metric that is there and not a finite number is an error, never a silent "-"
    for bad in ("N/A", None, True, float("nan"), float("inf"), [0.5]):
        with pytest.raises(ValueError, match="'acc,none' is .* not a finite number"):
            headline_value({"a": {"acc,none": bad}}, Headline(("a",), "acc"))
    with pytest.raises(ValueError, match="unknown reduce"):
        headline_value(metrics, Headline(("a",), "acc", "median"))


def test_headline_through_table1_mean_column():
    column = next(c for c in TABLE1 if c.real.reduce == "mean")  # POPE: three splits
    h = column.real
    stored = [0.80, 0.85, 0.90]
    metrics = {t: {f"{h.metric},none": v} for t, v in zip(h.tasks, stored)}
    assert headline_value(metrics, h) == pytest.approx(sum(stored) / len(stored) * h.scale)


@pytest.mark.parametrize("config, expected", [
    ({"model": "mmmamba", "model_args": "pretrained=/ckpt/mmMamba-hybrid,label=hybrid-s3"}, "hybrid-s3"),
    ({"model": "mmmamba", "model_args": "pretrained=/ckpt/mmMamba-hybrid/,dtype=bfloat16"}, "mmMamba-hybrid"),
    ({"model": "mmmamba", "model_args": {"pretrained": "/x/hovle", "label": "HoVLE"}}, "HoVLE"),
    ({"model": "mmmamba", "model_args": ""}, "mmmamba"),
    ({}, "fallback-dir"),
])
def test_model_label(config, expected):
    assert model_label(config, fallback="fallback-dir") == expected


def test_newest_file_wins_per_task_merged_across_files(tmp_path):
    mme = suite_columns("real")[0][1]  # first Table-1 column (single task)
    task, key = mme.tasks[0], mme.metric
    newer = write_results(tmp_path / "run2", {task: {key: 1300.0}}, "pretrained=/c/lin,label=lin", "20250102_000000")
    older = write_results(tmp_path / "run1", {task: {key: 1000.0}, "other_task": {"acc": 0.25}},
                          "pretrained=/c/lin,label=lin", "20250101_000000")
    write_results(tmp_path / "run3", {task: {key: 1111.0}}, "pretrained=/c/hyb", "20250103_000000")
    os.utime(newer, (1_000, 1_000))  # the older run's file is newer on disk: the lmms-eval stamp must decide
    scores = load_scores([tmp_path])
    assert sorted(scores) == ["hyb", "lin"]
    assert scores["lin"].metrics[task][f"{key},none"] == 1300.0
    assert scores["lin"].sources[task] == newer
    assert scores["lin"].metrics["other_task"]["acc,none"] == 0.25
    assert scores["lin"].sources["other_task"] == older
    assert scores["hyb"].metrics[task][f"{key},none"] == 1111.0


def test_missing_metric_renders_dash_and_measured_row_sits_beside_paper_row(tmp_path):
    write_results(tmp_path, real_metrics({"MME": 1290.25}), "pretrained=/c/x,label=mmmamba_linear", "20250101_000000")
    write_results(tmp_path / "b", real_metrics({"MME": 1111.0}), "pretrained=/c/new-model", "20250101_000000")
    md = render_table1(load_scores([tmp_path]), load_paper().table1)
    lines = table_lines(md)
    names = [(cells[0], cells[1]) for cells in lines[1:]]
    # paper rows first in paper order; the measured mmmamba_linear row right after the paper's mmMamba-linear row
    i = names.index(("mmMamba-linear", "paper"))
    assert names[i + 1] == ("mmmamba_linear", "measured")
    assert names[-1] == ("new-model", "measured")
    assert len(names) == 16 + 2
    measured = table_row(md, ["mmmamba_linear", "measured"])
    header = lines[0]
    assert measured[header.index("MME")] == "1290.2"
    assert all(measured[header.index(c.name)] == "-" for c in TABLE1 if c.name != "MME")
    assert "0.0" not in measured
    paper = table_row(md, ["mmMamba-linear", "paper"])
    assert paper[header.index("TQA")] == "47.7"


def test_mini_table_avg_over_percentage_columns(tmp_path):
    pct = percent_columns("mini")
    assert pct and "MME" not in pct
    values = {name: 0.5 + 0.05 * i for i, name in enumerate(pct)}
    write_results(tmp_path / "a", mini_metrics({**values, "MME": 1500.0}), "pretrained=/c/full", "20250101_000000")
    partial = dict(list(values.items())[1:])
    write_results(tmp_path / "b", mini_metrics(partial), "pretrained=/c/partial", "20250101_000000")
    scores = load_scores([tmp_path])
    frame = mini_frame(scores)
    assert frame.loc["full", "avg"] == pytest.approx(100 * sum(values.values()) / len(values))
    assert math.isnan(frame.loc["partial", "avg"])
    md = render_mini(scores)
    header = table_lines(md)[0]
    assert table_row(md, ["partial"])[header.index("avg")] == "-"
    assert table_row(md, ["full"])[header.index("avg")] == f"{100 * sum(values.values()) / len(values):.1f}"
    # the mini table uses the mini task names in its note
    for _, h in suite_columns("mini"):
        assert h.tasks[0] in md
    # and ends with the uniform-guess row, hand-derived: MME 5 x (50 + 25); MMB (1/4)^4; SQA-I mean of 1/2, 1/3, 1/4,
    # 1/2, 1/2 over its five categories
    chance = table_row(md, ["chance (uniform guess)"])
    assert chance[header.index("MME")] == "375.0" and chance[header.index("MMB")] == "0.4"
    assert chance[header.index("POPE")] == "50.0" and chance[header.index("SQA-I")] == "41.7"
    assert chance[header.index("avg")] == f"{(100 / 256 + 50 + 25 + 0 + 125 / 3 + 0) / 6:.1f}"


# ----------------------------------------------------------------------------------------------- speed


def test_speed_table_beside_paper(tmp_path):
    path = write_rows(tmp_path / "speed.json", SPEED_SCHEMA, [speed_row(), speed_row("my-model")])
    rows = load_speed_rows([path])
    md = render_speed(rows, load_paper().table2)
    names = [(c[0], c[1]) for c in table_lines(md)[1:]]
    i = names.index(("mmMamba-linear", "paper"))
    assert names[i + 1] == ("mmMamba-linear", "measured")
    assert names[-1] == ("my-model", "measured")
    assert table_row(md, ["mmMamba-linear", "measured"]) == [
        "mmMamba-linear", "measured", "H100", "bf16", "768", "256", "0.050", "1.05", "243.80", "graph=cuda"]
    assert table_row(md, ["HoVLE", "paper"]) == [
        "HoVLE", "paper", "RTX 4090 (paper)", "-", "768", "256", "-", "7.75", "33.03", "-"]


# ----------------------------------------------------------------------------------------------- figures


def _lines(fig, prefix: str):
    return [line for line in fig.axes[0].lines if (line.get_gid() or "").startswith(prefix)]


def test_latency_plot_lines_floor_and_oom(profile_rows, tmp_path):
    fig = plot_latency(profile_rows)
    ax = fig.axes[0]
    assert sorted(l.get_label() for l in _lines(fig, "series:")) == [
        "HoVLE (optimized)", "HoVLE (paper baseline)", "mmMamba-linear (optimized)"]
    paper_line = next(l for l in _lines(fig, "series:") if "paper" in l.get_label())
    assert paper_line.get_linestyle() == "-." and list(paper_line.get_xdata()) == [1 * K, 16 * K, 103 * K]
    floors = {l.get_gid(): l for l in _lines(fig, "floor:")}
    assert set(floors) == {"floor:HoVLE", "floor:mmMamba-linear"}
    assert floors["floor:HoVLE"].get_linestyle() == "--"
    assert floors["floor:HoVLE"].get_color() == paper_line.get_color()
    ooms = _lines(fig, "oom:")
    assert len(ooms) == 1 and ooms[0].get_marker() == "x"
    assert list(ooms[0].get_xdata()) == [128 * K]
    assert ooms[0].get_ydata()[0] == pytest.approx(ax.get_ylim()[1])
    assert [t.get_text() for t in ax.texts] == ["OOM"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1K", "2K", "4K", "8K", "16K", "32K", "64K", "128K"]
    assert ax.get_xscale() == "log"
    assert "NVIDIA H100 80GB HBM3, bfloat16" in ax.get_title()
    png = save_png(fig, tmp_path / "lat.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in tmp_path.iterdir()] == ["lat.png"]


def test_memory_plot_has_cap_line_and_oom(profile_rows):
    fig = plot_memory(profile_rows)
    caps = _lines(fig, "cap")
    assert len(caps) == 1 and caps[0].get_ydata()[0] == pytest.approx(24.0)
    assert len(_lines(fig, "series:")) == 3 and not _lines(fig, "floor:")
    hovle = next(l for l in _lines(fig, "series:") if l.get_label() == "HoVLE (optimized)")
    assert list(hovle.get_ydata()) == pytest.approx([5.0, 8.0, 20.0, 23.0], rel=1e-6)  # max(prefill, decode) peak
    assert len(_lines(fig, "oom:")) == 1


def test_device_caption_says_mixed():
    rows = [profile_row("a", "linear", K, 1.0), profile_row("a", "linear", 2 * K, 1.0, device="RTX 4090")]
    assert device_caption(rows).startswith("mixed devices: NVIDIA H100 80GB HBM3, RTX 4090")
    assert context_label(103 * K) == "103K" and context_label(1536) == "1.5K" and context_label(512) == "512"


def test_ratios_vs_transformer_at_103k_and_nearest(profile_rows):
    fig1 = load_fig1()
    ratios = {(r.model.label(), r.reference.label()): r for r in compare_to_transformer(profile_rows, fig1)}
    assert set(ratios) == {("mmMamba-linear (optimized)", "HoVLE (paper baseline)"),
                           ("mmMamba-linear (optimized)", "HoVLE (optimized)")}
    r = ratios[("mmMamba-linear (optimized)", "HoVLE (paper baseline)")]
    assert r.context == 103 * K
    assert r.speedup == pytest.approx(80.0 / 5.0)
    assert r.memory_saving_pct == pytest.approx(100 * (1 - 5.0 / 20.0), abs=1e-6)
    assert (r.paper_speedup, r.paper_memory_saving_pct) == (20.6, 75.8)
    # without a 103K row the nearest shared context (in tokens) is used: 64K (39K away), not 160K (57K away)
    rows = [profile_row("H", "transformer", c, ms) for c, ms in [(16 * K, 30.0), (64 * K, 40.0), (160 * K, 50.0)]]
    rows += [profile_row("L", "linear", c, 4.0) for c in (16 * K, 64 * K, 160 * K, 256 * K)]
    (only,) = compare_to_transformer(rows, fig1)
    assert only.context == 64 * K and only.speedup == pytest.approx(10.0)


# ----------------------------------------------------------------------------------------------- build_report


def test_build_report_end_to_end(tmp_path, profile_rows):
    res = tmp_path / "results"
    write_results(res, {**real_metrics({"MME": 1300.0}), **mini_metrics({"SQA-I": 0.5})},
                  "pretrained=/c/mmMamba-linear", "20250101_000000")
    prof = write_rows(tmp_path / "profile.json", PROFILE_SCHEMA, profile_rows)
    speed = write_rows(tmp_path / "speed.json", SPEED_SCHEMA, [speed_row()])
    out = tmp_path / "out"
    report = build_report([res], [prof], [speed], out, title="Test report")
    assert report == out / "report.md"
    text = report.read_text()
    assert text.startswith("# Test report\n")
    for heading in ("## Table 1", "### Mini suite", "## Table 2", "## Fig. 1", "### Ratios vs the Transformer"):
        assert heading in text
    assert "_Skipped" not in text
    assert table_row(text, ["mmMamba-linear", "measured", "-", "-", "1300.0"])
    assert "](decode_latency.png)" in text and "](peak_memory.png)" in text
    for name in ("decode_latency.png", "peak_memory.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.iterdir()) == ["decode_latency.png", "peak_memory.png", "report.md"]
    assert table_row(text, ["HoVLE (paper baseline)", "transformer", "128K"])[-2] == "oom"


def test_build_report_skips_sections_without_inputs(tmp_path):
    report = build_report([], [], [], tmp_path / "out")
    text = report.read_text()
    assert text.count("_Skipped:") == 3
    assert "no results directories given" in text and "no speed files given" in text
    assert not list((tmp_path / "out").glob("*.png"))


# ----------------------------------------------------------------------------------------------- malformed inputs


def test_bad_results_json_names_the_file(tmp_path):
    bad = tmp_path / "m" / "20250101_000000_results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ReportInputError, match=str(bad)):
        build_report([tmp_path], [], [], tmp_path / "out")
    assert not (tmp_path / "out" / "report.md").exists()


def test_results_without_results_key_names_the_file(tmp_path):
    bad = tmp_path / "x_results.json"
    bad.write_text(json.dumps({"config": {}}))
    with pytest.raises(ReportInputError, match=rf"{bad}.*'results'"):
        load_results_file(bad)


def test_wrong_schema_and_bad_rows_name_the_file(tmp_path):
    speed = write_rows(tmp_path / "speed.json", SPEED_SCHEMA, [speed_row()])
    with pytest.raises(ReportInputError, match=rf"{speed}.*schema"):
        load_profile_rows([speed])
    bad_ctx = tmp_path / "profile.json"
    bad_ctx.write_text(json.dumps({"schema": PROFILE_SCHEMA, "meta": {}, "rows": [
        {"model": "m", "kind": "linear", "context": "1K", "device": "d", "dtype": "bf16", "path": {}}]}))
    with pytest.raises(ReportInputError, match=rf"{bad_ctx}: row 0: context"):
        load_profile_rows([bad_ctx])
    with pytest.raises(ReportInputError, match="results path not found"):
        load_scores([tmp_path / "nope"])


# ----------------------------------------------------------------------------------------------- helpers


def test_markdown_table_formatter():
    md = markdown_table(["a", "b|c"], [["x|y", "-"]], ["l", "r"])
    assert md == "| a | b\\|c |\n|:---|---:|\n| x\\|y | - |\n"
    with pytest.raises(ValueError, match="row 0"):
        markdown_table(["a"], [["x", "y"]])


def test_import_is_cheap():
    code = ("import sys, mmmamba_bench.report; "
            "print([m for m in ('pandas', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "[]"


def test_report_refuses_a_non_numeric_headline_naming_the_file(tmp_path):
    from mmmamba_bench.report.inputs import ReportInputError
    from mmmamba_bench.report.scores import load_scores, score_frame

    folder = tmp_path / "runs" / "m"
    folder.mkdir(parents=True)
    bad = folder / "20260101_000000_results.json"
    bad.write_text(json.dumps({"results": {"mini_gqa": {"exact_match,none": "0.5"}},
                               "config": {"model_args": "pretrained=/x/m,label=m"}}))
    with pytest.raises(ReportInputError, match=r"20260101_000000_results.json: task 'mini_gqa': metric"):
        score_frame(load_scores([tmp_path / "runs"]), "mini")
