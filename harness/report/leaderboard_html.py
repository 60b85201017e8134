"""Leaderboard HTML: the SQLite history (``harness.leaderboard``) rendered with the report's
templates, ranked by one metric and by the cost-efficiency score, with each entry's history."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from harness.leaderboard import entries, history, rank, steps
from harness.metrics import METRICS
from harness.report.charts import trend_svg
from harness.report.html import environment


def trends(con: sqlite3.Connection, device_class: str | None = None) -> list[dict]:
    """A trend chart per (entry, metric) series with a detected step, with the steps' lines."""
    found = steps(con, device_class)
    hist = history(con, device_class)
    out = []
    for key, metric in dict.fromkeys((s.key, s.metric) for s in found):
        series = [e for e in hist[key] if e.metrics.get(metric) is not None]
        mine = [s for s in found if s.key == key and s.metric == metric]
        ids = [e.run_id for e in series]
        out.append({"title": f"{key[0]} {key[1]} [{key[2]}, {key[3]}] {metric}",
                    "svg": trend_svg([e.metrics[metric] for e in series], [ids.index(s.run_id) for s in mine],
                                     f"{key[0]} {key[1]} {metric}", METRICS.get(metric).unit),
                    "steps": [s.line() for s in mine]})
    return out


def write_html(con: sqlite3.Connection, out: str | Path, metric: str, device_class: str | None = None) -> Path:
    items = entries(con, device_class)
    classes = sorted({e.device_class for e in items})
    sections = [{"device_class": dc, "by_metric": rank([e for e in items if e.device_class == dc], metric),
                 "by_score": rank([e for e in items if e.device_class == dc])} for dc in classes]
    runs = con.execute("SELECT run_id, started, status, profile, path FROM runs ORDER BY started").fetchall()
    html = environment().get_template("leaderboard.html.j2").render(
        metric=metric, unit=METRICS.get(metric).unit, higher=METRICS.get(metric).higher_is_better,
        sections=sections, history=history(con, device_class), runs=runs, trends=trends(con, device_class))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
