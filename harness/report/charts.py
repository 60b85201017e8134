"""Inline SVG charts (matplotlib, Agg backend, text kept as escaped SVG text).

``pareto_svg`` plots one point per model x technique with both metrics measured and
draws the Pareto front (both axes lower-is-better unless told otherwise). Points of
simulated storage (fake-quant, masks) are hollow: their size/speed is not a real saving.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
            "#7f7f7f", "#bcbd22"]


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    group: str = ""  # colour (technique family / model)
    hollow: bool = False
    reference: bool = False
    frontier: bool = False  # on the frontier of a ``harness search`` run (frontier.json)


def pareto_front(points: list[Point], x_higher: bool = False, y_higher: bool = False) -> list[Point]:
    """Points not dominated by any other (better or equal on both axes, better on one)."""
    sx = -1 if x_higher else 1
    sy = -1 if y_higher else 1

    def dominates(a: Point, b: Point) -> bool:
        return (sx * a.x <= sx * b.x and sy * a.y <= sy * b.y) and (sx * a.x < sx * b.x or sy * a.y < sy * b.y)

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: sx * p.x)


def pareto_svg(points: list[Point], xlabel: str, ylabel: str, title: str, *, logx: bool = False,
               x_higher: bool = False, y_higher: bool = False) -> str:
    """An SVG document (string) of the scatter and its Pareto front."""
    with plt.rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "harness"}):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        if not points:
            ax.text(0.5, 0.5, "no points with both metrics measured", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
        else:
            groups = list(dict.fromkeys(p.group for p in points))
            colour = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(groups)}
            for g in groups:
                pts = [p for p in points if p.group == g and not p.reference]
                for hollow in (False, True):
                    sel = [p for p in pts if p.hollow == hollow]
                    if sel:
                        ax.scatter([p.x for p in sel], [p.y for p in sel], s=36, zorder=3,
                                   facecolors="none" if hollow else colour[g], edgecolors=colour[g],
                                   label=f"{g}{' (simulated)' if hollow else ''}")
            refs = [p for p in points if p.reference]
            if refs:
                ax.scatter([p.x for p in refs], [p.y for p in refs], marker="*", s=160, c="black",
                           zorder=4, label="reference")
            front = pareto_front(points, x_higher, y_higher)
            if len(front) > 1:
                ax.plot([p.x for p in front], [p.y for p in front], color="#555", lw=1, ls="--", zorder=2,
                        label="Pareto front")
            _search_frontier(ax, points, x_higher, y_higher)
            xs, ys = [p.x for p in points], [p.y for p in points]
            if logx or (min(xs) > 0 and max(xs) / min(xs) > 20):
                ax.set_xscale("log")
            if min(ys) > 0 and max(ys) / min(ys) > 3:  # a few broken models must not flatten the rest
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(ScalarFormatter())
            else:
                ax.ticklabel_format(axis="y", useOffset=False, style="plain")
            _labels(ax, fig, points, front)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
        ax.set_title(title)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    svg = buf.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)  # RDF boilerplate
    return svg[svg.index("<svg"):]  # drop the XML prolog/doctype for inlining


def trend_svg(values: list[float], step_at: list[int], title: str, ylabel: str, fmt: str = "svg") -> str | bytes:
    """An SVG line chart (or PNG bytes with ``fmt="png"``, for docs) of one series over runs,
    with each detected step marked and the level on either side drawn as segment medians."""
    import statistics

    with plt.rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "harness"}):
        fig, ax = plt.subplots(figsize=(6.4, 2.6), dpi=100)
        xs = list(range(1, len(values) + 1))
        ax.plot(xs, values, marker="o", ms=3, lw=1, color=_PALETTE[0], label="runs")
        cuts = [0, *step_at, len(values)]
        for a, b in zip(cuts, cuts[1:]):
            if b > a:
                ax.hlines(statistics.median(values[a:b]), a + 1, b, colors="#555", linestyles="--", lw=1)
        for i in step_at:
            ax.axvline(i + 0.5, color="#c0392b", lw=1.2, label="step" if i == step_at[0] else None)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set_xlabel("run (oldest first)")
        ax.set_ylabel(ylabel)
        ax.set_title(_short(title, 80))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
        fig.tight_layout()
        if fmt == "png":
            raw = io.BytesIO()
            fig.savefig(raw, format="png", dpi=120)
            plt.close(fig)
            return raw.getvalue()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    svg = re.sub(r"<metadata>.*?</metadata>", "", buf.getvalue(), flags=re.S)
    return svg[svg.index("<svg"):]


def _search_frontier(ax, points: list[Point], x_higher: bool, y_higher: bool) -> None:
    """A search run's frontier points ringed, and the line through those of them that are
    non-dominated on this chart's two axes (the whole frontier when these are its objectives)."""
    marked = [p for p in points if p.frontier]
    if not marked:
        return
    ax.scatter([p.x for p in marked], [p.y for p in marked], s=110, facecolors="none", edgecolors="#c0392b",
               linewidths=1.6, zorder=5, label="search frontier")
    line = pareto_front(marked, x_higher, y_higher)
    if len(line) > 1:
        ax.step([p.x for p in line], [p.y for p in line], where="post", color="#c0392b", lw=1.4, zorder=4)


def _labels(ax, fig, points: list[Point], front: list[Point]) -> None:
    """Label the reference and front first, then others whose label would not overlap."""
    fig.canvas.draw()
    order = [p for p in points if p.reference] + [p for p in front if not p.reference]
    order += [p for p in points if p not in order]
    placed: list[tuple[float, float, float, float]] = []  # label boxes in display pixels
    for p in order:
        x, y = ax.transData.transform((p.x, p.y))
        text = _short(p.label)
        box = (x + 4, y + 2, x + 8 + 4.4 * len(text), y + 13)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        placed.append(box)
        ax.annotate(text, (p.x, p.y), textcoords="offset points", xytext=(4, 3), fontsize=7, color="#333")


def _short(label: str, n: int = 28) -> str:
    label = re.sub(r"\s+", " ", label)
    return label if len(label) <= n else label[: n - 1] + "…"
