"""Plots that read: cost against N in small panels, quality against latency with placed labels, and
the check that no two labels of a figure overlap (:func:`overlapping_texts`).

Every text of a figure made here (titles, axis and tick labels, legend entries, point labels) is
checked after drawing: tick labels that would collide are thinned, a point label is placed at the
first offset where it collides with nothing (or listed in a legend when no offset is free), and a
panel holds at most :data:`PANEL_LINES` lines, so a crowded family is split over several panels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PANEL_LINES",
    "Panel",
    "Point",
    "Series",
    "chunk_panels",
    "cost_figure",
    "log_axes",
    "overlapping_texts",
    "pareto_figure",
    "save",
    "thin_ticks",
]

PANEL_LINES = 8
"""Most lines in one cost panel: more colours than this are hard to tell apart."""
_MARKERS = "osD^v<>ph*"
_PAD_PX = -2.0
"""Boxes closer than 2 px count as overlapping: touching tick labels read as one number."""


@dataclass
class Series:
    """One line of a cost panel: ``label`` and its points ``xs`` (tokens N) against ``ys`` per metric;
    ``grid`` draws it dashed (a 2-D/3-D mechanism, N = H*W or D*H*W)."""

    label: str
    xs: list[float]
    ys: dict[str, list[float]]
    grid: bool = False


@dataclass
class Panel:
    """A row of a cost figure: a title and its series."""

    title: str
    series: list[Series] = field(default_factory=list)


@dataclass
class Point:
    """One mechanism in a Pareto panel: latency ``x`` (ms), quality ``y`` and its spread ``yerr``."""

    label: str
    x: float
    y: float
    yerr: float = 0.0
    front: bool = False


def chunk_panels(title: str, series: Sequence[Series], size: int = PANEL_LINES) -> list[Panel]:
    """``series`` split into panels of at most ``size`` lines, titled ``title (1/k)`` when split."""
    chunks = [list(series[i : i + size]) for i in range(0, len(series), size)] or [[]]
    if len(chunks) == 1:
        return [Panel(title, chunks[0])]
    return [Panel(f"{title} ({i + 1}/{len(chunks)})", c) for i, c in enumerate(chunks)]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _boxes_overlap(a: Any, b: Any, pad: float = _PAD_PX) -> bool:
    return a.x0 < b.x1 - pad and b.x0 < a.x1 - pad and a.y0 < b.y1 - pad and b.y0 < a.y1 - pad


def _in_view(axis: Any, ticks: Sequence[Any]) -> list[Any]:
    """The ticks of ``ticks`` inside ``axis``'s view interval with a visible, non-empty label."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * ((hi - lo) or 1.0)
    return [
        t
        for t in ticks
        if t.get_loc() is not None
        and lo - tol <= t.get_loc() <= hi + tol
        and t.label1.get_visible()
        and t.label1.get_text().strip()
    ]


def _tick_texts(axis: Any) -> tuple[list[Any], set[int]]:
    """The tick labels ``axis`` draws (ticks inside its view) and the ids of all its tick texts."""
    every = {
        id(t)
        for ticks in (axis.majorTicks, axis.minorTicks)
        for tick in ticks
        for t in (tick.label1, tick.label2)
    }
    drawn = [t.label1 for t in _in_view(axis, [*axis.get_major_ticks(), *axis.get_minor_ticks()])]
    return drawn, every


def overlapping_texts(fig: Any) -> list[tuple[str, str]]:
    """Pairs of visible texts of ``fig`` whose drawn boxes overlap, after ``fig.canvas.draw()``: tick
    labels (of ticks in view), axis labels, titles, annotations, legend entries (a legend counts as
    one box, which must also stay off every other panel). Empty when the figure reads."""
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes: list[tuple[str, Any]] = []
    tick_ids: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            drawn, every = _tick_texts(axis)
            tick_ids |= every
            boxes += [(f"tick {t.get_text()!r}", t.get_window_extent(renderer)) for t in drawn]
    legends = [lg for lg in fig.findobj(Legend) if lg.get_visible()]
    legend_ids = {id(t) for lg in legends for t in lg.findobj(Text)}
    for text in fig.findobj(Text):
        if id(text) in tick_ids or id(text) in legend_ids or not text.get_visible():
            continue
        if text.get_text().strip():
            boxes.append((repr(text.get_text()), text.get_window_extent(renderer)))
    for i, lg in enumerate(legends):
        boxes.append((f"legend {i}", lg.get_window_extent(renderer)))
    pairs = [(na, nb) for i, (na, a) in enumerate(boxes) for nb, b in boxes[i + 1 :] if _boxes_overlap(a, b)]
    for i, lg in enumerate(legends):
        box = lg.get_window_extent(renderer)
        own = lg.axes
        pairs += [
            (f"legend {i}", f"panel {ax.get_title()!r}")
            for ax in fig.axes
            if ax is not own and _boxes_overlap(box, ax.get_window_extent(renderer))
        ]
    return pairs


def thin_ticks(fig: Any) -> None:
    """Keep, on every axis of ``fig``, the major tick labels that do not collide with a kept
    neighbour (and no minor labels), so that crowded measured sizes never overprint; one draw."""
    from matplotlib.ticker import FixedLocator, NullLocator

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis, horizontal in ((ax.xaxis, True), (ax.yaxis, False)):
            ticks = _in_view(axis, axis.get_major_ticks())
            boxes = sorted(
                ((t.label1.get_window_extent(renderer), t.get_loc()) for t in ticks),
                key=lambda bl: bl[0].x0 if horizontal else bl[0].y0,
            )
            kept: list[tuple[Any, float]] = []
            for box, loc in boxes:
                if not kept or not _boxes_overlap(kept[-1][0], box, pad=-3.0):
                    kept.append((box, loc))
            if len(kept) < len(boxes):
                axis.set_major_locator(FixedLocator([loc for _, loc in kept]))
                axis.set_minor_locator(NullLocator())


def log_axes(ax: Any, xticks: Sequence[float]) -> None:
    """Log-log ``ax`` with major x ticks at the measured sizes ``xticks`` and y ticks at 1-2-5
    steps, in plain numbers (no ``10^k`` and no minor labels)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    if xticks:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(xticks))))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", alpha=0.3)


def cost_figure(
    panels: Sequence[Panel], metrics: Sequence[tuple[str, str]], *, xlabel: str, title: str = ""
) -> Any:
    """A figure with one row per panel and one column per ``(metric key, y label)`` of log-log lines
    against N, the row's legend right of its last column; tick labels thinned where they would
    collide. Write it with :func:`save`."""
    plt = _pyplot()
    rows, cols = max(1, len(panels)), len(metrics)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 2.6, 2.9 * rows + 0.4), squeeze=False)
    for r, panel in enumerate(panels):
        for c, (key, ylabel) in enumerate(metrics):
            ax = axes[r][c]
            xs_all: list[float] = []
            for i, s in enumerate(panel.series):
                pts = [(x, y) for x, y in zip(s.xs, s.ys.get(key, [])) if y is not None and y > 0]
                if not pts:
                    continue
                xs_all += [p[0] for p in pts]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "--" if s.grid else "-",
                    marker=_MARKERS[i % len(_MARKERS)],
                    ms=4,
                    color=plt.cm.tab10(i % 10),
                    label=s.label,
                )
            log_axes(ax, xs_all)
            ax.set_title(panel.title, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            if r == rows - 1:
                ax.set_xlabel(xlabel, fontsize=8)
            if not xs_all:
                ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
        handles, labels = axes[r][0].get_legend_handles_labels()
        if handles:
            axes[r][cols - 1].legend(
                handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False
            )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    thin_ticks(fig)
    return fig


_OFFSETS = [
    (6, 4),
    (6, -11),
    (-6, 4),
    (-6, -11),
    (0, 9),
    (0, -15),
    (12, 12),
    (-12, -18),
    (14, -2),
    (-14, -2),
    (0, 20),
    (0, -26),
    (20, 18),
    (-20, -24),
]


def _place_labels(ax: Any, points: Sequence[Point]) -> list[Point]:
    """Annotate each point at the first offset of :data:`_OFFSETS` where its label stays inside the
    panel and off every placed label, marker and tick label; returns the points left unlabelled."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for p in points:
        x, y = ax.transData.transform((p.x, p.y))
        taken.append(Bbox.from_extents(x - 4, y - 4, x + 4, y + 4))
    unplaced = []
    for p in points:
        for dx, dy in _OFFSETS:
            ann = ax.annotate(
                p.label,
                (p.x, p.y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=7,
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
            )
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(_boxes_overlap(box, t, pad=-3.0) for t in taken):
                taken.append(box)
                break
            ann.remove()
        else:
            unplaced.append(p)
    return unplaced


def pareto_figure(panels: Sequence[tuple[str, str, Sequence[Point]]], *, xlabel: str, title: str) -> Any:
    """A figure with one quality-vs-latency panel per ``(panel title, y label, points)``: log
    latency, error bars of the quality's spread, the Pareto front in red and dashed; labels placed
    so that none collide (a point whose label fits nowhere is listed beside the panel)."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    n = max(1, len(panels))
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 4.2 * n + 0.4), squeeze=False)
    for ax, (name, ylabel, points) in zip(axes[:, 0], panels):
        for p in points:
            colour = "tab:red" if p.front else "tab:blue"
            ax.errorbar([p.x], [p.y], yerr=[p.yerr], fmt="o", ms=5, color=colour, capsize=3, zorder=3)
        front = sorted((p.x, p.y) for p in points if p.front)
        if len(front) > 1:
            ax.plot([f[0] for f in front], [f[1] for f in front], color="tab:red", lw=1, ls="--")
        ax.set_xscale("log")
        if points:
            xs, ys = [p.x for p in points], [p.y for p in points]
            ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
            span = max(max(ys) - min(ys), 0.05)
            ax.set_ylim(max(0.0, min(ys) - 0.35 * span), min(1.02, max(ys) + 0.35 * span))
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    thin_ticks(fig)
    for ax, (_, _, points) in zip(axes[:, 0], panels):
        unplaced = _place_labels(ax, points)
        if unplaced:
            handles = [ax.plot([], [], "o", color="tab:red" if p.front else "tab:blue")[0] for p in unplaced]
            ax.legend(
                handles,
                [f"{p.label} ({p.x:.3g} ms, {p.y:.3f})" for p in unplaced],
                fontsize=7,
                loc="center left",
                bbox_to_anchor=(1.02, 0.5),
                frameon=False,
                title="not labelled",
            )
    return fig


def save(fig: Any, path: Path) -> list[tuple[str, str]]:
    """Write ``fig`` to ``path`` (PNG, cropped to its content), close it, and return its overlapping
    texts (:func:`overlapping_texts`; empty when the figure reads)."""
    overlaps = overlapping_texts(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return overlaps
