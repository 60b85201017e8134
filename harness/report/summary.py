"""One model x technique table from a run's records, shared by the terminal summary, the
Markdown summary and the HTML report (so all three show the same numbers).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.baselines.judge import Verdict
from harness.baselines.store import combine_runs, profile_of
from harness.baselines.verdicts import RAW_LATENCY, read_verdicts, worst
from harness.metrics import METRICS
from harness.records import Record, load_records
from harness.rundir import load_outcomes, read_run_info, run_status

SIMULATED = {"fake-quant", "mask"}
LEGEND = ("pass = the 95% interval of the change is within tolerance; regressed / improved = a real change (the "
          "interval excludes none) whose estimate is beyond the tolerance, worse / better; inconclusive = not decided "
          "by these samples (the note says how many would decide) or raw latency while the host moved (judge the "
          "speed-ups); not-comparable = other device or fingerprint; new = no baseline entry; "
          "missing = in the baseline, not measured")


@dataclass(frozen=True)
class Column:
    """A report column: the registered metric and how it is shown (``harness.metrics``)."""

    metric: str
    header: str
    fmt: Callable[[float], str]
    delta: bool = False  # show % change vs the reference
    terminal: bool = False  # part of the compact terminal / Markdown table


COLUMNS = [Column(m.name, m.column.header, m.column.format, m.column.delta, m.column.terminal)
           for m in METRICS.ordered() if m.column is not None]


@dataclass
class Cell:
    text: str
    value: float | None = None
    tooltip: str = ""
    verdict: str = ""
    delta_pct: float | None = None
    na: bool = False


@dataclass
class Row:
    model: str
    technique: str
    spec: str
    storage: str
    profile: str
    test_ids: list[str] = field(default_factory=list)
    records: dict[str, Record] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    outcome: str = ""

    @property
    def simulated(self) -> bool:
        return self.storage in SIMULATED

    @property
    def verdict(self) -> str:
        """The worst verdict among the metrics actually compared (not-comparable only when
        nothing was)."""
        compared = [v.status for v in self.verdicts.values() if v.status != "not-comparable"]
        return worst(compared) or worst(v.status for v in self.verdicts.values())

    @property
    def not_compared(self) -> str:
        """The families left out of ``verdict``, in one short phrase: ``speed, memory not
        compared (AVX2 baseline, this host AVX512)``; "" when every metric was compared."""
        skipped = [v for v in self.verdicts.values() if v.status == "not-comparable"]
        if not skipped or self.verdict == "not-comparable":
            return ""
        fams = ", ".join(dict.fromkeys(family(v.metric) for v in skipped))
        why = "; ".join(dict.fromkeys(why_not_compared(v) for v in skipped))
        return f"{fams} not compared ({why})"

    @property
    def verdict_text(self) -> str:
        return " · ".join(x for x in (self.verdict, self.not_compared) if x)

    def value(self, metric: str) -> float | None:
        r = self.records.get(metric)
        return r.value if r is not None and r.status == "ok" else None

    def cell(self, col: Column) -> Cell:
        r = self.records.get(col.metric)
        if r is None:
            return Cell("—", tooltip="not recorded by this run", na=True)
        v = self.verdicts.get(col.metric)
        vtext = v.status if v else ""
        tip = v.line() if v else ""
        if r.status != "ok" or r.value is None:
            return Cell("N/A", tooltip=f"{r.status}: {r.reason}", na=True)
        text = col.fmt(r.value)
        dp = r.extra.get("delta_pct") if col.delta else None
        if dp is not None:
            text += f" ({dp:+.1f}%)"
        if r.spread.get("p10") is not None and r.spread.get("p90") is not None:
            tip = (f"median of n={r.n}, p10–p90 [{col.fmt(r.spread['p10'])}, {col.fmt(r.spread['p90'])}]"
                   + (f"; {tip}" if tip else ""))
        if col.metric.startswith(("size.", "latency.speedup")) and self.simulated:
            tip = f"{self.storage}: simulated, no real saving" + (f"; {tip}" if tip else "")
        return Cell(text, r.value, tip, vtext, dp)


# What a metric is, in a row's "not compared" phrase.
FAMILIES = (("latency.", "speed"), ("memory.", "memory"), ("energy.", "energy"), ("compress.", "compress time"),
            ("train.", "train time"))


def family(metric: str) -> str:
    return next((name for prefix, name in FAMILIES if metric.startswith(prefix)), metric)


def why_not_compared(v: Verdict) -> str:
    """A not-comparable verdict's reason, short: ``AVX2 baseline, this host AVX512`` for a
    fingerprint field that differs (the first one), ``baseline only for cpu-x`` for a device
    class without a baseline file."""
    m = re.search(r"fingerprints differ: (\w+): (.*?) -> (.*?)(?:;|$)", v.note)
    if m:
        field_, base, here = m.groups()
        if field_ == "cpu_capability":
            return f"{base.strip()} baseline, this host {here.strip()}"
        return f"{field_} differs: baseline {base.strip()}, this host {here.strip()}"
    m = re.search(r"baselines exist only for (.*?); this device is (\S+)", v.note)
    if m:
        return f"baseline only for {m.group(1)}, this host {m.group(2)}"
    return v.note.split(":")[0] or "not comparable"


def attention(verdicts: Iterable[Verdict]) -> list[dict[str, Any]]:
    """The verdicts needing attention: each regressed or missing one, and the not-comparable
    ones grouped into one line per reason (with how many metrics, which families, which rows)."""
    out: list[dict[str, Any]] = []
    groups: dict[str, list[Verdict]] = {}
    for v in verdicts:
        if v.status in ("regressed", "missing"):
            out.append({"status": v.status, "model": v.model, "spec": v.spec, "metric": v.metric,
                        "baseline": v.baseline, "measured": v.measured, "tolerance": v.tolerance, "note": v.note})
        elif v.status == "not-comparable":
            groups.setdefault(why_not_compared(v), []).append(v)
    for why, vs in groups.items():
        fams = ", ".join(dict.fromkeys(family(v.metric) for v in vs))
        out.append({"status": "not-comparable", "model": ", ".join(dict.fromkeys(v.model for v in vs)),
                    "spec": f"{len({v.spec for v in vs})} technique(s)", "metric": f"{len(vs)} {fams} metric(s)",
                    "baseline": None, "measured": None, "tolerance": "", "note": why})
    return out


SPEED_HINT = ("Speed verdicts on this host: `harness run --against origin/main` measures the base commit here, "
              "interleaved; or start a baseline for this runner class: `harness run --repeat 3`, then "
              "`harness baseline update OUT.repeats/*`.")


@dataclass
class RunSummary:
    run_dir: Path
    info: dict[str, Any]
    status: str
    partial_reason: str
    records: list[Record]
    rows: list[Row]
    columns: list[Column]
    verdicts: list[Verdict]
    outcomes: list[dict[str, Any]]
    unavailable: list[tuple[Column, str]] = field(default_factory=list)  # N/A in every row
    skipped: list[str] = field(default_factory=list)  # damaged record lines left out

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def verdict_counts(self) -> Counter:
        return Counter(v.status for v in self.verdicts)

    def host_note(self) -> str:
        """One sentence when the uncompressed reference's own latency moved against its
        baseline: then the host, not the compression code, moved raw latencies this run."""
        moved = [v for v in self.verdicts if v.spec == "none" and v.metric in RAW_LATENCY
                 and v.status == "inconclusive" and v.baseline and v.measured is not None]
        noisy = [v for v in self.verdicts if v.status == "inconclusive"
                 and (" would decide" in v.note or "only repeated runs narrow" in v.note)]
        out = []
        if moved:
            parts = ", ".join(f"{v.metric} {100 * (v.measured / v.baseline - 1):+.0f}%" for v in moved)
            out.append(f"Host moved: the uncompressed reference itself measured {parts} against its baseline on "
                       f"this device class, so raw latency verdicts of this run reflect the machine; the speed-up "
                       f"ratios (measured against this run's own reference) are the comparable figures.")
        if noisy:
            metrics = ", ".join(sorted({v.metric for v in noisy}))
            out.append(f"Too noisy to decide: {len(noisy)} verdict(s) ({metrics}) could not be decided from "
                       f"these samples; each note says what would decide it (more samples: a longer "
                       f"latency budget or more windows; or, where run-to-run noise dominates, repeated runs).")
        return " ".join(out)

    def speed_hint(self) -> str:
        """How to get speed verdicts here, when speed figures went uncompared."""
        return SPEED_HINT if any(v.status == "not-comparable" and family(v.metric) == "speed"
                                 for v in self.verdicts) else ""

    def outcome_counts(self) -> Counter:
        return Counter(o["outcome"] for o in self.outcomes)


def build_rows(records: Iterable[Record], vs: Iterable[Verdict] = (), outcomes: Iterable[dict] = ()) -> list[Row]:
    rows: dict[tuple, Row] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        key = (r.model, r.spec, profile_of(r))
        row = rows.setdefault(key, Row(r.model, r.technique, r.spec, r.storage, profile_of(r)))
        row.records[r.metric] = r
        row.storage = r.storage or row.storage
        if r.test_id and r.test_id not in row.test_ids:
            row.test_ids.append(r.test_id)
    for v in vs:
        row = rows.get((v.model, v.spec, v.profile))
        if row is not None:
            row.verdicts[v.metric] = v
    by_test = {o["nodeid"]: o["outcome"] for o in outcomes}
    for row in rows.values():
        row.outcome = worst_outcome(by_test.get(t, "") for t in row.test_ids)
    return sorted(rows.values(), key=lambda w: (w.model, w.technique != "none", w.technique, w.spec, w.profile))


def worst_outcome(outcomes: Iterable[str]) -> str:
    s = set(outcomes)
    return next((o for o in ("error", "failed", "xpassed", "xfailed", "skipped", "passed") if o in s), "")


def summarize(run_dir: str | Path, verdicts: list[Verdict] | None = None, *,
              skip_bad_lines: bool = False) -> RunSummary:
    """Load a run directory (records merged across workers) into a RunSummary.

    ``verdicts``: the run's verdicts (``harness.baselines.verdicts.run_verdicts``); default:
    those the run stored in its ``verdicts.jsonl``, or none. A report never judges."""
    run_dir = Path(run_dir)
    records = load_records(run_dir, skip_bad_lines=skip_bad_lines)
    info = read_run_info(run_dir)
    vs = list(verdicts) if verdicts is not None else (read_verdicts(run_dir) or [])
    outcomes = sorted(load_outcomes(run_dir), key=lambda o: o["nodeid"])
    rows = build_rows(combine_runs(records), vs, outcomes)  # repeats of a run: its median run
    present = {r.metric for r in records}
    cols, unavailable = [], []
    for c in (c for c in COLUMNS if c.metric in present):
        recs = [r.records[c.metric] for r in rows if c.metric in r.records]
        if all(x.status != "ok" for x in recs):
            unavailable.append((c, "; ".join(dict.fromkeys(x.reason or x.status for x in recs))))
        else:
            cols.append(c)
    status, why = run_status(run_dir)
    return RunSummary(run_dir, info, status, why, records, rows, cols, vs, outcomes, unavailable,
                      list(records.skipped))


def table(rows: list[Row], columns: list[Column]) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the compact table (terminal and Markdown)."""
    cols = [c for c in columns if c.terminal]
    header = ["model", "technique", "storage", *[c.header for c in cols], "verdict", "test"]
    body = []
    for r in rows:
        body.append([r.model, r.spec, r.storage + (" (simulated)" if r.simulated else ""),
                     *[r.cell(c).text for c in cols], r.verdict_text or "-", r.outcome or "-"])
    return header, body


def summary_lines(run_dir: str | Path, verdicts: list[Verdict] | None = None) -> list[str]:
    """The terminal summary: aligned table, verdict counts, regressions, run status."""
    s = summarize(run_dir, verdicts)
    header, body = table(s.rows, s.columns)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    lines = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]
    vc = s.verdict_counts()
    if vc:
        lines.append("verdicts: " + ", ".join(f"{k} {vc[k]}" for k in sorted(vc)))
        lines.append(f"  ({LEGEND})")
    for v in s.verdicts:
        if v.status == "regressed":
            lines.append(f"  REGRESSED {v.line()}")
    if s.host_note():
        lines.append(s.host_note())
    if s.info.get("baseline_source"):
        lines.append(f"baseline: {s.info['baseline_source']}" + (f" ({s.info['lock_note']})"
                                                                  if s.info.get("lock_note") else ""))
    if s.speed_hint():
        lines.append(s.speed_hint())
    if s.status != "complete":
        lines.append(f"PARTIAL RUN: {s.partial_reason}")
    if s.skipped:
        lines.append(f"DAMAGED RECORDS: {len(s.skipped)} line(s) skipped; first: {s.skipped[0]}")
    lines.append(f"{len(s.records)} records in {s.run_dir} (run {s.info.get('run_id', '?')})")
    return lines
