"""Compare two runs metric by metric (run A is the baseline, run B the candidate).

Each (model, spec, profile, metric) measured in both runs gets A, B, the change and a
noise-aware verdict with the default tolerance of the metric (``harness.baselines``).
Runs of different device classes are compared only with a visible warning.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.baselines import MetricBaseline, Verdict, compare, default_tolerance, entry_key, worst
from harness.records import Record, load_records
from harness.report.html import environment


@dataclass
class Delta:
    model: str
    spec: str
    profile: str
    metric: str
    a: float | None
    b: float | None
    unit: str
    verdict: Verdict | None

    @property
    def pct(self) -> float | None:
        return None if self.a in (None, 0) or self.b is None else 100 * (self.b / self.a - 1)


def _latest(records: list[Record]) -> dict[tuple, Record]:
    out: dict[tuple, Record] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        out[(*entry_key(r), r.metric)] = r
    return out


def compare_runs(run_a: str | Path, run_b: str | Path, metrics: list[str] | None = None, *,
                 skip_bad_lines: bool = False) -> tuple[list[Delta], list[str]]:
    """Deltas of every metric in either run, and warnings (device classes differ, damaged
    record lines skipped, ...)."""
    a, b = load_records(run_a, skip_bad_lines=skip_bad_lines), load_records(run_b, skip_bad_lines=skip_bad_lines)
    warnings = [f"damaged records: {msg}" for msg in a.skipped + b.skipped]
    dca = sorted({r.device_class for r in a if r.device_class})
    dcb = sorted({r.device_class for r in b if r.device_class})
    if dca != dcb:
        warnings.append(f"device classes differ ({', '.join(dca) or '?'} vs {', '.join(dcb) or '?'}): "
                        f"latency/memory deltas are not comparable")
    la, lb = _latest(a), _latest(b)
    out = []
    for key in sorted(set(la) | set(lb)):
        if metrics and key[3] not in metrics:
            continue
        ra, rb = la.get(key), lb.get(key)
        va = ra.value if ra is not None and ra.status == "ok" else None
        vb = rb.value if rb is not None and rb.status == "ok" else None
        v = None
        if va is not None and vb is not None:
            base = MetricBaseline(va, bool(ra.higher_is_better), default_tolerance(ra.metric),
                                  {k: x for k, x in (ra.spread or {}).items() if k in ("p10", "p90")})
            v = compare(rb, base)
        unit = (ra or rb).unit
        out.append(Delta(*key, va, vb, unit, v))
    return out, warnings


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.5g}"


def delta_lines(deltas: list[Delta]) -> list[str]:
    header = ["model", "technique", "metric", "A", "B", "change", "verdict"]
    rows = [[d.model, d.spec + ("" if d.profile == "full" else f" [{d.profile}]"), d.metric, _fmt(d.a),
             _fmt(d.b), "—" if d.pct is None else f"{d.pct:+.1f}%",
             d.verdict.status if d.verdict else ("only in A" if d.b is None and d.a is not None else
                                                 "only in B" if d.a is None and d.b is not None else "N/A")]
            for d in deltas]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def write_compare_html(run_a: str | Path, run_b: str | Path, deltas: list[Delta], warnings: list[str],
                       out: str | Path) -> Path:
    html = environment().get_template("compare.html.j2").render(
        run_a=str(run_a), run_b=str(run_b), deltas=deltas, warnings=warnings,
        overall=worst(d.verdict.status for d in deltas if d.verdict))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
