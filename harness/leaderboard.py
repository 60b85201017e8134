"""Leaderboard: many runs -> one SQLite history -> rankings of model x technique.

An *entry* is (model, spec, profile, device class): rankings never mix device classes
or measurement profiles. Ingesting a run is idempotent (a run's rows are keyed by its
run id). Each ranking uses an entry's latest run; the history keeps every run.

Cost-efficiency score (see docs/guide/reports.md)::

    score = accuracy_retained x size_reduction / compute_cost
    accuracy_retained = ppl_ref / ppl            (ppl.window; encoders: fidelity.cosine)
    size_reduction    = bytes_ref / bytes        (size.compression_ratio)
    compute_cost      = latency / latency_ref    (latency.decode_ms_per_token; encoders: latency.forward_ms)

with the reference (spec ``none``) measured in the same run. The reference scores 1.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.baselines.store import entry_key
from harness.metrics import METRICS
from harness.records import load_records
from harness.rundir import read_run_info, run_status

DEFAULT_DB = Path("reports") / "leaderboard.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, path TEXT, started REAL, status TEXT,
    profile TEXT, ingested REAL, fingerprint TEXT, commit_id TEXT);
CREATE TABLE IF NOT EXISTS results (run_id TEXT, model TEXT, technique TEXT, spec TEXT, profile TEXT,
    storage TEXT, device_class TEXT, metric TEXT, value REAL, reference REAL, unit TEXT, status TEXT,
    reason TEXT, timestamp REAL, samples TEXT,
    PRIMARY KEY (run_id, model, spec, profile, device_class, metric));
"""
# Columns added after the first release: older databases gain them on connect.
ADDED = {"runs": [("commit_id", "TEXT")], "results": [("samples", "TEXT")]}


def connect(db: str | Path) -> sqlite3.Connection:
    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    try:
        con.executescript(SCHEMA)
        for table, cols in ADDED.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            for name, typ in cols:
                if name not in have:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {typ}")
    except sqlite3.DatabaseError as e:
        con.close()
        raise ValueError(f"{db}: not a harness leaderboard database ({e})") from None
    return con


def ingest(con: sqlite3.Connection, run_dir: str | Path, *, skip_bad_lines: bool = False,
           skipped: list[str] | None = None) -> int:
    """Add (or refresh) one run directory; returns the number of result rows. Messages
    for damaged record lines that were left out go to ``skipped``."""
    records = load_records(run_dir, skip_bad_lines=skip_bad_lines)
    if skipped is not None:
        skipped.extend(records.skipped)
    info = read_run_info(run_dir)
    latest = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        latest[(r.run_id or info.get("run_id") or Path(run_dir).name, *entry_key(r), r.device_class,
                r.metric)] = r
    status, _ = run_status(run_dir)
    run_ids = {k[0] for k in latest}
    with con:
        for rid in run_ids:
            con.execute("INSERT OR REPLACE INTO runs (run_id, path, started, status, profile, ingested, "
                        "fingerprint, commit_id) VALUES (?,?,?,?,?,?,?,?)",
                        (rid, str(Path(run_dir).resolve()), info.get("started") or
                         min(r.timestamp for r in records), status, info.get("profile"), time.time(),
                         json.dumps(info.get("fingerprint") or {}, sort_keys=True), info.get("commit")))
        for (rid, model, spec, profile, dc, metric), r in latest.items():
            con.execute("INSERT OR REPLACE INTO results (run_id, model, technique, spec, profile, storage, "
                        "device_class, metric, value, reference, unit, status, reason, timestamp, samples) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (rid, model, r.technique, spec, profile, r.storage, dc, metric,
                         r.value if r.status == "ok" else None, r.extra.get("reference"), r.unit, r.status,
                         r.reason, r.timestamp, json.dumps(r.samples) if r.samples else None))
    return len(latest)


@dataclass
class Entry:
    model: str
    spec: str
    profile: str
    device_class: str
    technique: str = ""
    storage: str = ""
    run_id: str = ""
    started: float = 0.0
    metrics: dict[str, float | None] = field(default_factory=dict)
    refs: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, dict] = field(default_factory=dict)  # metric -> the record's raw samples
    rank: int = 0  # shared by entries whose difference lies inside the interval (``rank``)
    score: float | None = None
    score_note: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.spec, self.profile, self.device_class)


def _score(e: Entry) -> tuple[float | None, str]:
    ref = e.technique == "none"
    if e.metrics.get("ppl.window") is not None:
        acc, acc_ref = e.metrics["ppl.window"], e.refs.get("ppl.window")
        retained = 1.0 if ref else (acc_ref / acc if acc_ref and acc else None)
        lat_m = "latency.decode_ms_per_token"
    else:
        retained = 1.0 if ref else e.metrics.get("fidelity.cosine")
        lat_m = "latency.forward_ms"
    ratio = 1.0 if ref else e.metrics.get("size.compression_ratio")
    lat, lat_ref = e.metrics.get(lat_m), e.refs.get(lat_m)
    cost = 1.0 if ref else (lat / lat_ref if lat and lat_ref else None)
    missing = [n for n, v in (("accuracy", retained), ("size.compression_ratio", ratio), (lat_m, cost))
               if v is None]
    if missing:
        return None, "not scored: missing " + ", ".join(missing)
    return retained * ratio / cost, f"retained {retained:.3f} x size {ratio:.2f}x / cost {cost:.2f}"


def entries(con: sqlite3.Connection, device_class: str | None = None, latest: bool = True) -> list[Entry]:
    """Entries with their metrics (latest run each, or every run when ``latest`` is False)."""
    q = ("SELECT r.run_id, r.model, r.technique, r.spec, r.profile, r.storage, r.device_class, r.metric, "
         "r.value, r.reference, runs.started, r.samples FROM results r JOIN runs USING (run_id)")
    args: tuple = ()
    if device_class:
        q += " WHERE r.device_class = ?"
        args = (device_class,)
    by: dict[tuple, Entry] = {}
    for rid, model, tech, spec, profile, storage, dc, metric, value, ref, started, samples in con.execute(q, args):
        e = by.setdefault((rid, model, spec, profile, dc), Entry(model, spec, profile, dc, tech, storage,
                                                               rid, started or 0.0))
        e.metrics[metric] = value
        e.refs[metric] = ref
        if samples:
            e.samples[metric] = json.loads(samples)
    out = list(by.values())
    for e in out:
        e.score, e.score_note = _score(e)
    if latest:
        newest: dict[tuple, Entry] = {}
        for e in sorted(out, key=lambda e: (e.started, e.run_id)):
            newest[e.key] = e
        out = list(newest.values())
    return out


def rank(items: list[Entry], metric: str | None = None) -> list[Entry]:
    """Best first by ``metric`` (its direction from the metric registry) or by score;
    entries without the figure go last. Ranking by a metric sets ``Entry.rank``: an entry
    shares the rank of the entry above it when the interval of their difference (the same
    statistics as verdicts: paired over windows for perplexity, bootstrap of medians for
    timings) contains no change, i.e. when the order between them is inside the noise."""
    if metric is None:
        out = sorted(items, key=lambda e: (e.score is None, -(e.score or 0.0), e.model, e.spec))
        for i, e in enumerate(out, 1):
            e.rank = i
        return out
    hib = METRICS.get(metric).higher_is_better
    have = [e for e in items if e.metrics.get(metric) is not None]
    rest = [e for e in items if e.metrics.get(metric) is None]
    have.sort(key=lambda e: (-e.metrics[metric] if hib else e.metrics[metric], e.model, e.spec))
    for i, e in enumerate(have):
        prev = have[i - 1] if i else None
        e.rank = prev.rank if prev is not None and _tied(e, prev, metric) else i + 1
    for e in rest:
        e.rank = 0
    return have + sorted(rest, key=lambda e: (e.model, e.spec))


def _tied(a: Entry, b: Entry, metric: str) -> bool:
    """Whether the interval of a's change against b contains zero (False without samples)."""
    from harness.baselines.file import MetricBaseline, Tolerance, baseline_samples
    from harness.baselines.judge import change_interval
    from harness.records import Record

    if a.model != b.model or not a.samples.get(metric) or not b.samples.get(metric):
        return False
    m = METRICS.get(metric)
    base = MetricBaseline(float(b.metrics[metric]), m.higher_is_better, Tolerance(0.0, True),
                          samples=baseline_samples(b.samples[metric]))
    try:
        change, _ = change_interval(Record(metric, a.metrics[metric], samples=a.samples[metric]), base)
    except ValueError:
        return False
    return change is not None and change.lo <= 0 <= change.hi


def steps(con: sqlite3.Connection, device_class: str | None = None, metric: str | None = None) -> list:
    """Detected steps (``harness.changepoints``) of every (entry, metric) series, oldest run
    first, each explained by the two runs' fingerprints and commits."""
    from harness.baselines.file import parse_tolerance
    from harness.changepoints import Step, change_points, explain

    runs = {r[0]: {"fingerprint": r[1], "commit": r[2]}
            for r in con.execute("SELECT run_id, fingerprint, commit_id FROM runs")}
    out = []
    for key, series in history(con, device_class).items():
        names = [metric] if metric else sorted({m for e in series for m in e.metrics if m in METRICS})
        for name in names:
            pts = [(e.run_id, e.metrics[name]) for e in series if e.metrics.get(name) is not None]
            if len(pts) < 4:
                continue
            vals = [v for _, v in pts]
            tol = parse_tolerance(METRICS.get(name).tolerance)
            med = sorted(abs(v) for v in vals)[len(vals) // 2] or 1.0
            allowed = tol.value if tol.relative else tol.value / med
            for i in change_points(vals, allowed):
                before = sorted(vals[max(0, i - 5): i])[len(vals[max(0, i - 5): i]) // 2]
                after = sorted(vals[i: i + 5])[len(vals[i: i + 5]) // 2]
                fp, commits = explain(runs.get(pts[i - 1][0], {}), runs.get(pts[i][0], {}))
                out.append(Step(key, name, pts[i][0], pts[i - 1][0], before, after, fp, commits))
    return out


def history(con: sqlite3.Connection, device_class: str | None = None) -> dict[tuple, list[Entry]]:
    """Every run of every entry, oldest first."""
    out: dict[tuple, list[Entry]] = {}
    for e in sorted(entries(con, device_class, latest=False), key=lambda e: (e.started, e.run_id)):
        out.setdefault(e.key, []).append(e)
    return out
