"""Assemble ``report.md`` (+ PNGs): Table 1 and mini-suite scores, Table 2 speed, Fig. 1 latency / memory vs context.

All inputs are read and checked before anything is written, so a malformed file fails the build without leaving a
half-updated report; every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..results import ProfileRow, SpeedRow, atomic_write
from .figures import plot_latency, plot_memory, save_png
from .paper import PaperNumbers, load_paper
from .profile import (
    compare_to_transformer,
    device_caption,
    load_profile_rows,
    mixed_devices,
    paper_context_notes,
    render_profile_table,
    render_ratios,
)
from .scores import (
    ModelScores,
    find_results_files,
    load_results_file,
    merge_results,
    render_mini,
    render_sources,
    render_table1,
    score_frame,
)
from .speed import load_not_measured, load_speed_rows, render_speed, render_speed_notes

DEFAULT_TITLE = "mmMamba benchmark report"
REPORT_NAME = "report.md"
LATENCY_PNG = "decode_latency.png"
MEMORY_PNG = "peak_memory.png"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` atomically (a temporary file renamed into place)."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def _skipped(what: str) -> str:
    return f"_Skipped: {what}._\n"


def _paths(paths: Sequence[Path]) -> str:
    return ", ".join(f"`{p}`" for p in paths) if paths else "none"


def scores_section(scores: dict[str, ModelScores], paper: PaperNumbers, results_dirs: Sequence[Path]) -> str:
    """Table 1 (real benchmarks beside the paper), the mini suite, and where each task's numbers came from."""
    out = ["## Table 1: general benchmarks\n"]
    if not scores:
        why = "no results directories given" if not results_dirs else (
            f"no `*_results.json` under {_paths(results_dirs)}")
        return "\n".join(out + [_skipped(why)])
    real, mini = score_frame(scores, "real"), score_frame(scores, "mini")
    out.append(render_table1(scores, paper.table1) if len(real) else _skipped("no real-benchmark scores measured"))
    out.append("### Mini suite\n")
    out.append(render_mini(scores) if len(mini) else _skipped("no mini-suite scores measured"))
    out.append("### Sources\n")
    out.append(render_sources(scores))
    return "\n".join(out)


def speed_section(rows: Sequence[SpeedRow], paper: PaperNumbers,
                  not_measured: Sequence[dict[str, str]] = ()) -> str:
    head = "## Table 2: generation speed\n"
    if not rows:
        return "\n".join([head, _skipped("no speed files given")])
    return "\n".join([head, render_speed(rows, paper.table2), render_speed_notes(rows, paper.table2, not_measured)])


def context_section(rows: Sequence[ProfileRow], paper: PaperNumbers, out_dir: Path) -> str:
    """Fig.-1 plots (written next to the report), the table of rows, and the ratios vs the Transformer."""
    head = "## Fig. 1: decode latency and memory vs context\n"
    if not rows:
        return "\n".join([head, _skipped("no profile files given")])
    save_png(plot_latency(rows), out_dir / LATENCY_PNG)
    save_png(plot_memory(rows), out_dir / MEMORY_PNG)
    ratios = compare_to_transformer(rows, paper.fig1)
    return "\n".join([
        head,
        f"![decode latency vs context]({LATENCY_PNG})\n",
        f"![peak memory vs context]({MEMORY_PNG})\n",
        (f"_Measured on {device_caption(rows)}. Dash-dot: the paper-faithful baseline (growing cache); solid: the "
         "optimized decode path; dashed: each model's memory-bandwidth floor (`floor_ms`); x on the top edge: out "
         f"of memory. {paper_context_notes(paper.fig1)}_\n"),
        "### Measured rows\n",
        render_profile_table(rows),
        f"### Ratios vs the Transformer at {paper.fig1.comparison_context}\n",
        render_ratios(ratios, paper.fig1, mixed_devices(rows)) if ratios
        else _skipped("no Transformer series measured at a context shared with another model"),
    ])


def build_report(results_dirs: Sequence[Path], profile_files: Sequence[Path], speed_files: Sequence[Path],
                 out_dir: Path, title: str = DEFAULT_TITLE, paper_dir: Path | None = None) -> Path:
    """Write ``out_dir/report.md`` (and the Fig.-1 PNGs when there are profile rows); return the report's path.

    results_dirs: folders searched recursively for lmms-eval ``*_results.json`` files (a file path is used as is).
    profile_files / speed_files: files written by ``write_rows`` with ``PROFILE_SCHEMA`` / ``SPEED_SCHEMA``.
    paper_dir: where the paper's numbers live (default ``reports/paper/`` of this checkout).
    Raises :class:`~mmmamba_bench.report.inputs.ReportInputError` naming the file for any malformed input.
    """
    from mmmamba_bench.outputs import check_output_dir

    out_dir = check_output_dir(out_dir, "--out")  # before reading anything
    paper = load_paper(paper_dir)
    results_files = find_results_files(results_dirs)
    scores = merge_results(load_results_file(p) for p in results_files)
    profile_rows = load_profile_rows(profile_files)
    speed_rows = load_speed_rows(speed_files)
    not_measured = load_not_measured(speed_files)

    inputs = (f"Inputs: {len(results_files)} lmms-eval results file(s) from {_paths(results_dirs)}; "
              f"{len(profile_rows)} profile row(s) from {_paths(profile_files)}; "
              f"{len(speed_rows)} speed row(s) from {_paths(speed_files)}.\n")
    text = "\n".join([f"# {title}\n", inputs, scores_section(scores, paper, results_dirs),
                      speed_section(speed_rows, paper, not_measured), context_section(profile_rows, paper, out_dir)])
    return write_text_atomic(out_dir / REPORT_NAME, text)
