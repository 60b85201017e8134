"""The self-contained HTML report of a run (jinja2 with autoescape; inline SVG; no network).

Everything a reader needs is in one file: the model x technique table with verdicts
against the baseline, Pareto charts, the pytest outcome of every test, the environment
fingerprint and, folded away, every record of the run.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from harness.baselines.judge import Verdict
from harness.report.charts import Point, pareto_svg
from harness.report.summary import LEGEND, Row, RunSummary, attention, summarize

TEMPLATES = Path(__file__).resolve().parent / "templates"


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=4: "" if v is None else f"{v:.{d}g}"
    env.filters["when"] = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC") if isinstance(t, (int, float)) else ""
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=1, sort_keys=True, default=str)
    return env


def _points(rows: list[Row], x_metric: str, y_metric: str, x_scale: float = 1.0,
            frontier: frozenset = frozenset()) -> list[Point]:
    pts = []
    for r in rows:
        x, y = r.value(x_metric), r.value(y_metric)
        if x is not None and y is not None and r.profile != "search-proxy":  # proxy: a shorter protocol
            pts.append(Point(r.spec, x * x_scale, y, group=r.storage or "?", hollow=r.simulated,
                             reference=r.technique == "none", frontier=(r.model, r.spec, r.profile) in frontier))
    return pts


def charts_for(rows: list[Row], model: str, frontier: frozenset = frozenset()) -> list[Markup]:
    """Accuracy-vs-size and accuracy-vs-latency Pareto charts for one model; the points of a
    search run's frontier (``frontier``: (model, spec, profile) keys) are ringed and joined."""
    causal = any(r.value("ppl.window") is not None for r in rows)
    if causal:
        acc, acc_label, higher = "ppl.window", "perplexity (window protocol, lower is better)", False
        lat, lat_label = "latency.decode_ms_per_token", "decode ms / token (lower is better)"
    else:
        acc, acc_label, higher = "fidelity.cosine", "embedding cosine vs reference (higher is better)", True
        lat, lat_label = "latency.forward_ms", "forward ms (lower is better)"
    return [
        Markup(pareto_svg(_points(rows, "size.bytes", acc, 1e-6, frontier), "serialized size (MB)", acc_label,
                          f"{model}: accuracy vs size", y_higher=higher)),
        Markup(pareto_svg(_points(rows, lat, acc, frontier=frontier), lat_label, acc_label,
                          f"{model}: accuracy vs latency",
                          y_higher=higher)),
    ]


def row_kernel(r: Row) -> str:
    """The CPU/GPU code path that produced the row's latencies (``extra.kernel`` of its
    latency records; ``harness.layers.exec.kernel_summary``), or ""."""
    return next((rec.extra["kernel"] for m, rec in sorted(r.records.items())
                 if m.startswith("latency.") and (rec.extra or {}).get("kernel")), "")


def _cells(r: Row, columns) -> list[tuple[Any, str]]:
    """(cell, kernel tag) per column: latency cells name their kernel (tag on the first, tooltip on all)."""
    kern, out, tagged = row_kernel(r), [], False
    for c in columns:
        cell, tag = r.cell(c), ""
        if kern and c.metric.startswith("latency.") and not cell.na:
            cell.tooltip = f"kernel: {kern}" + (f"; {cell.tooltip}" if cell.tooltip else "")
            tag, tagged = ("" if tagged else kern), True
        out.append((cell, tag))
    return out


def context(s: RunSummary) -> dict[str, Any]:
    from harness.search.frontier import frontier_keys

    front, models = frozenset(frontier_keys(s.run_dir)), []
    for m in s.models:
        rows = [r for r in s.rows if r.model == m]
        models.append({"name": m, "rows": [(r, _cells(r, s.columns)) for r in rows], "frontier": front,
                       "charts": charts_for(rows, m, front)})
    fp = s.info.get("fingerprint") or {}
    return {
        "s": s, "info": s.info, "mixed_profiles": len({r.profile for r in s.rows}) > 1, "models": models,
        "columns": s.columns, "fingerprint": fp,
        "device_classes": sorted({r.device_class for r in s.records if r.device_class}),
        "problems": [v for v in s.verdicts if v.status in ("regressed", "missing", "not-comparable")],
        "attention": attention(s.verdicts), "speed_hint": s.speed_hint(),
        "new": [v for v in s.verdicts if v.status == "new"],
        "compared": sum(v.status in ("pass", "regressed", "improved") for v in s.verdicts),
        "improved": [v for v in s.verdicts if v.status == "improved"],
        "verdict_counts": sorted(s.verdict_counts().items()), "legend": LEGEND,
        "outcome_counts": sorted(s.outcome_counts().items()),
        "records": sorted(s.records, key=lambda r: (r.model, r.spec, r.metric, r.timestamp)),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def render_html(s: RunSummary) -> str:
    return environment().get_template("report.html.j2").render(**context(s))


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 verdicts: list[Verdict] | None = None, *, skip_bad_lines: bool = False) -> Path:
    """Render ``run_dir`` to ``out`` (default ``<run_dir>/report.html``) with ``verdicts``
    (default: those stored in the run directory); returns the path."""
    return write_html(summarize(run_dir, verdicts, skip_bad_lines=skip_bad_lines), out)


def write_html(s: RunSummary, out: str | Path | None = None) -> Path:
    """Write an already summarized run (callers that also need its Markdown summarize once)."""
    path = Path(out) if out else Path(s.run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(s), encoding="utf-8")
    return path
