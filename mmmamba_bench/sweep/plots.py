"""The sweep's two Pareto plots: quality (with its 95% interval) against decode latency, and against memory.

Built on an explicit Agg canvas (no pyplot, no global backend). Every drawn element carries a ``gid`` saying what it
is, which tests inspect: ``config:<name>`` (a configuration's point and error bar), ``oom:<name>`` (one that does
not fit the GPU at that context: drawn, never on the front), ``front`` (the Pareto front's staircase).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Point:
    """A configuration on the plot: quality and its interval (y), cost (x)."""

    name: str
    quality: float
    ci_low: float
    ci_high: float
    cost: float | None  # None: no number at this context
    fits: bool = True  # False: out of memory at this context
    on_front: bool = False


def plot_pareto(points: Sequence[Point], xlabel: str, title: str, log_x: bool = False) -> Figure:
    """Quality vs cost; the front's points circled and joined by a staircase (higher quality costs more)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10"]
    drawn = [p for p in points if p.cost is not None]
    for i, p in enumerate(drawn):
        colour = cmap(i % cmap.N) if p.fits else "grey"
        ax.errorbar([p.cost], [p.quality], yerr=[[p.quality - p.ci_low], [p.ci_high - p.quality]],
                    fmt="o" if p.fits else "x", color=colour, capsize=3, markersize=5,
                    label=p.name if p.fits else f"{p.name} (out of memory)",
                    gid=f"config:{p.name}" if p.fits else f"oom:{p.name}")
        ax.annotate(p.name, (p.cost, p.quality), xytext=(4, 4), textcoords="offset points", fontsize=7)
    front = sorted((p for p in drawn if p.on_front), key=lambda p: p.cost)
    if front:
        ax.plot([p.cost for p in front], [p.quality for p in front], drawstyle="steps-post", color="black",
                linewidth=1.0, alpha=0.7, label="Pareto front", gid="front")
        ax.scatter([p.cost for p in front], [p.quality for p in front], s=120, facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=3)
    if log_x and drawn and min(p.cost for p in drawn) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("quality (mean score, 95% interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def save(fig: Figure, path: Path) -> Path:
    from mmmamba_bench.report.figures import save_png

    return save_png(fig, path)
