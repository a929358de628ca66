"""Fig.-1-style plots: decode ms/token and peak memory vs context, one line per (model, baseline).

Figures are built on an explicit Agg canvas (no pyplot, no global backend switch). Every drawn line carries a
``gid`` saying what it is (``series:<label>``, ``floor:<model>``, ``oom:<label>``, ``cap``), which tests inspect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..results import ProfileRow, atomic_write
from .profile import GIB, context_label, device_caption, group_series, mixed_devices, peak_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LINESTYLES = {"paper": "-.", "optimized": "-"}  # any other baseline: dotted
HEADROOM = 1.15  # y axis top = largest plotted value x this; OOM markers sit on the top edge


def _new_figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colours(rows: Sequence[ProfileRow]) -> dict[str, tuple]:
    """One colour per model (both baselines of a model share it), in order of first appearance."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    models = list(dict.fromkeys(r.model for r in rows))
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def _log2_context_axis(ax: Axes, contexts: Sequence[int]) -> None:
    """Log-2 x axis with one labelled tick per power of two spanning the data (1K, 2K, ..., 128K)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    lo = math.floor(math.log2(min(contexts)))
    hi = math.ceil(math.log2(max(contexts)))
    ticks = [2**k for k in range(lo, hi + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([context_label(t) for t in ticks])
    ax.set_xlim(ticks[0] / 1.15, ticks[-1] * 1.15)
    ax.set_xlabel("context (tokens)")


LOG_Y_SPAN = 10.0  # values spanning more than this factor get a log y axis


def _plot_vs_context(rows: Sequence[ProfileRow], value: Callable[[ProfileRow], float | None], ylabel: str,
                     title: str, floor: Callable[[ProfileRow], float | None] | None = None,
                     caps: Sequence[float] = ()) -> Figure:
    """Shared body of both plots: series lines, optional per-model floor lines, OOM markers, cap lines."""
    fig = _new_figure()
    ax = fig.add_subplot()
    colours = _colours(rows)
    with_device = mixed_devices(rows)
    groups = group_series(rows)
    plotted: list[float] = list(caps)

    for key, group in groups.items():
        points = [(r.context, value(r)) for r in group if r.status == "ok" and value(r) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, color=colours[key.model],
                    linestyle=LINESTYLES.get(key.baseline, ":"), label=key.label(with_device),
                    gid=f"series:{key.label(with_device)}")
            plotted.extend(ys)

    if floor is not None:
        plotted.extend(_draw_floors(ax, rows, floor, colours))

    positive = [v for v in plotted if v > 0]
    if positive and max(positive) / min(positive) > LOG_Y_SPAN:
        # e.g. a paper-style baseline 30x above the optimised lines: a linear axis would flatten the latter
        ax.set_yscale("log")
        top = max(positive) * HEADROOM**2
        ax.set_ylim(min(positive) / HEADROOM**2, top)
    else:
        top = max(plotted) * HEADROOM if plotted else 1.0
        ax.set_ylim(0.0, top)
    for cap in caps:
        ax.axhline(cap, color="grey", linestyle=":", linewidth=1.2, label=f"memory cap {cap:.1f} GiB", gid="cap")
    _draw_ooms(ax, groups, top, colours, with_device)

    _log2_context_axis(ax, [r.context for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{device_caption(rows)}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _draw_floors(ax: Axes, rows: Sequence[ProfileRow], floor: Callable[[ProfileRow], float | None],
                 colours: dict[str, tuple]) -> list[float]:
    """One dashed bandwidth-floor line per model (first value seen per context), in the model's colour."""
    per_model: dict[str, dict[int, float]] = {}
    for r in rows:
        f = floor(r)
        if f is not None:
            per_model.setdefault(r.model, {}).setdefault(r.context, f)
    drawn: list[float] = []
    for model, points in per_model.items():
        xs = sorted(points)
        ys = [points[x] for x in xs]
        ax.plot(xs, ys, linestyle="--", linewidth=1.0, alpha=0.8, color=colours[model],
                label=f"{model} bandwidth floor", gid=f"floor:{model}")
        drawn.extend(ys)
    return drawn


def _draw_ooms(ax: Axes, groups: dict, top: float, colours: dict[str, tuple], with_device: bool) -> None:
    """An "x" on the top edge of the axes, annotated "OOM", for each context a series ran out of memory at."""
    for key, group in groups.items():
        xs = [r.context for r in group if r.status == "oom"]
        if not xs:
            continue
        ax.plot(xs, [top] * len(xs), linestyle="none", marker="x", markersize=9, markeredgewidth=2,
                color=colours[key.model], clip_on=False, gid=f"oom:{key.label(with_device)}")
        for x in xs:
            ax.annotate("OOM", (x, top), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7,
                        color=colours[key.model], annotation_clip=False)


def plot_latency(rows: Sequence[ProfileRow]) -> Figure:
    """Decode ms per token vs context, with each model's bandwidth floor (``floor_ms``) dashed in its colour."""
    return _plot_vs_context(rows, value=lambda r: r.decode_ms_per_token, ylabel="decode latency (ms / token)",
                            title="Next-token decode latency vs context", floor=lambda r: r.floor_ms)


def plot_memory(rows: Sequence[ProfileRow]) -> Figure:
    """Peak memory (GiB; the larger of the prefill and decode peaks) vs context, with any memory cap drawn."""
    caps = sorted({r.memory_cap_bytes / GIB for r in rows if r.memory_cap_bytes})

    def peak_gib(r: ProfileRow) -> float | None:
        peak = peak_bytes(r)
        return None if peak is None else peak / GIB

    return _plot_vs_context(rows, value=peak_gib, ylabel="peak memory (GiB)", title="Peak GPU memory vs context",
                            caps=caps)


def save_png(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG atomically (a temporary file renamed into place)."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)
