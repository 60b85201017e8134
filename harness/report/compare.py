"""Compare two runs metric by metric (run A is the baseline, run B the candidate), and put
runs from several device classes side by side (``harness report --by device_class``).

Each (model, spec, profile, metric) measured in both runs on one device class gets A, B,
the change and a noise-aware verdict with the default tolerance of the metric (B judged with
A as its baseline, by the caller). Figures of different device classes are shown next to
each other and never judged against each other (``not comparable``). A and B may each be several run
directories (shards, machines), read as one run through ``harness.merge``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.baselines.judge import Verdict
from harness.baselines.store import entry_key
from harness.baselines.verdicts import worst
from harness.merge import load_many
from harness.records import Record
from harness.report.html import environment

RunDirs = str | Path | list[str] | list[Path]


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
    device_a: str = ""
    device_b: str = ""

    @property
    def pct(self) -> float | None:
        return None if self.a in (None, 0) or self.b is None else 100 * (self.b / self.a - 1)

    @property
    def cross_device(self) -> bool:
        return bool(self.device_a and self.device_b and self.device_a != self.device_b)

    @property
    def status(self) -> str:
        """The verdict, or why there is none."""
        if self.verdict:
            return self.verdict.status
        if self.cross_device:
            return "not comparable (device class)"
        return "only in A" if self.b is None and self.a is not None else \
            "only in B" if self.a is None and self.b is not None else "N/A"


def _latest(records: list[Record]) -> dict[tuple, Record]:
    out: dict[tuple, Record] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        out[(*entry_key(r), r.metric, r.device_class)] = r
    return out


def _as_list(run: RunDirs) -> list:
    return list(run) if isinstance(run, list) else [run]


def _delta(key: tuple, ra: Record | None, rb: Record | None, judged: dict[tuple, Verdict]) -> Delta:
    va = ra.value if ra is not None and ra.status == "ok" else None
    vb = rb.value if rb is not None and rb.status == "ok" else None
    da, db = (ra.device_class if ra else ""), (rb.device_class if rb else "")
    v = judged.get((*key, db)) if va is not None and vb is not None and da == db else None  # never across classes
    return Delta(*key, va, vb, (ra or rb).unit, v if v is None or v.status != "new" else None, da, db)


def compare_runs(run_a: RunDirs, run_b: RunDirs, metrics: list[str] | None = None, *,
                 verdicts: Iterable[Verdict] = (), skip_bad_lines: bool = False) -> tuple[list[Delta], list[str]]:
    """Deltas of every metric in either run, and warnings (device classes differ, damaged
    record lines skipped, ...). ``verdicts``: B judged with A as its baseline (``judge_run``
    over ``BaselineStore.of(A)``: samples of both sides, and speed only where the two
    fingerprints agree: the same-host mode). Each cell is compared within its device class;
    a cell that A measured on one class only and B on another is shown side by side, unjudged."""
    a, wa = load_many(_as_list(run_a), skip_bad_lines=skip_bad_lines)
    b, wb = load_many(_as_list(run_b), skip_bad_lines=skip_bad_lines)
    warnings = [f"A: {w}" for w in wa] + [f"B: {w}" for w in wb]
    warnings += [f"damaged records: {msg}" for msg in a.skipped + b.skipped]
    dca = sorted({r.device_class for r in a if r.device_class})
    dcb = sorted({r.device_class for r in b if r.device_class})
    if dca != dcb:
        warnings.append(f"device classes differ ({', '.join(dca) or '?'} vs {', '.join(dcb) or '?'}): "
                        f"latency/memory deltas are not comparable; no verdicts across device classes")
    la, lb = _latest(a), _latest(b)
    dcs = {(*entry_key(r), r.metric): r.device_class for r in b}
    judged = {(v.model, v.spec, v.profile, v.metric, dcs.get((v.model, v.spec, v.profile, v.metric), "")): v
              for v in verdicts}
    cells: dict[tuple, tuple[dict, dict]] = {}
    for side, latest in ((0, la), (1, lb)):
        for (*key, dc), r in latest.items():
            cells.setdefault(tuple(key), ({}, {}))[side][dc] = r
    out = []
    for key in sorted(cells):
        if metrics and key[3] not in metrics:
            continue
        ina, inb = cells[key]
        if len(ina) == 1 and len(inb) == 1 and set(ina) != set(inb):  # one class each: side by side
            out.append(_delta(key, next(iter(ina.values())), next(iter(inb.values())), judged))
            continue
        out += [_delta(key, ina.get(dc), inb.get(dc), judged) for dc in sorted(set(ina) | set(inb))]
    return out, warnings


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.5g}"


def delta_lines(deltas: list[Delta]) -> list[str]:
    devices = len({d.device_a for d in deltas} | {d.device_b for d in deltas} - {""}) > 1
    header = ["model", "technique", "metric", *(["device A", "device B"] if devices else []),
              "A", "B", "change", "verdict"]
    rows = [[d.model, d.spec + ("" if d.profile == "full" else f" [{d.profile}]"), d.metric,
             *([d.device_a or "—", d.device_b or "—"] if devices else []), _fmt(d.a), _fmt(d.b),
             "—" if d.pct is None else f"{d.pct:+.1f}%", d.status] for d in deltas]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def write_compare_html(run_a: RunDirs, run_b: RunDirs, deltas: list[Delta], warnings: list[str],
                       out: str | Path) -> Path:
    html = environment().get_template("compare.html.j2").render(
        run_a=", ".join(map(str, _as_list(run_a))), run_b=", ".join(map(str, _as_list(run_b))), deltas=deltas,
        devices=len({d.device_a for d in deltas} | {d.device_b for d in deltas} - {""}) > 1, warnings=warnings,
        overall=worst(d.verdict.status for d in deltas if d.verdict))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


BY_DEVICE_METRICS = ("latency.speedup_decode", "latency.speedup_prefill", "latency.decode_tok_s",
                     "size.compression_ratio", "ppl.window")
PAYS = 1.10  # a speed-up at or above this, against the device's own reference, "pays"


@dataclass
class DeviceTable:
    """The same (model, spec, profile) cells per device class: ``values[cell][dc][metric]``."""

    classes: list[str]
    metrics: list[str]
    values: dict[tuple[str, str, str], dict[str, dict[str, float | None]]]


def load_by_device(dirs: list[str | Path], metrics: tuple[str, ...] = BY_DEVICE_METRICS, *,
                   skip_bad_lines: bool = False) -> tuple[DeviceTable, list[str]]:
    """Runs of one suite from several machines -> a side-by-side table. Speed-ups are the
    runs' own derived figures: each device against its own uncompressed reference."""
    records, warnings = load_many(list(dirs), skip_bad_lines=skip_bad_lines)
    latest = _latest(records)
    present = {k[3] for k in latest}
    shown = [m for m in metrics if m in present]
    classes = sorted({k[4] for k in latest if k[4]})
    values: dict[tuple, dict[str, dict[str, float | None]]] = {}
    for (model, spec, profile, metric, dc), r in latest.items():
        if metric in shown and dc:
            values.setdefault((model, spec, profile), {}).setdefault(dc, {})[metric] = \
                r.value if r.status == "ok" else None
    return DeviceTable(classes, shown, values), warnings


def _cells(t: DeviceTable) -> tuple[list[str], list[list[str]]]:
    header = ["model", "technique"] + [f"{dc}: {m}" for dc in t.classes for m in t.metrics]
    rows = []
    for (model, spec, profile), per in sorted(t.values.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none",
                                                                                  kv[0][1], kv[0][2])):
        rows.append([model, spec + ("" if profile == "full" else f" [{profile}]")]
                    + [_fmt(per.get(dc, {}).get(m)) for dc in t.classes for m in t.metrics])
    return header, rows


def pays_lines(t: DeviceTable) -> list[str]:
    """Per device class: which techniques speed decoding up by >= PAYS against that
    device's own reference, and which do not (a summary, not a verdict)."""
    out = []
    for dc in t.classes:
        got = {(m, s, p): per[dc].get("latency.speedup_decode") for (m, s, p), per in t.values.items()
               if dc in per and s != "none"}
        pays = sorted((k for k, v in got.items() if v is not None and v >= PAYS), key=lambda k: -got[k])
        rest = sorted(k for k, v in got.items() if v is not None and v < PAYS)
        na = sorted(k for k, v in got.items() if v is None)
        out.append(f"{dc}: decode speed-up >= {PAYS:.2f}x: {_named(pays, got)}; below: {_named(rest, got)}"
                   + (f"; not measured: {len(na)}" if na else ""))
    return out


def _named(keys: list[tuple], got: dict[tuple, float | None]) -> str:
    return ", ".join(f"{k[1]} ({_fmt(got[k])}x)" for k in keys) or "none"


def by_device_lines(t: DeviceTable) -> list[str]:
    header, rows = _cells(t)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows), "",
            "figures per device class; no verdicts across classes", *pays_lines(t)]


def by_device_markdown(t: DeviceTable) -> str:
    header, rows = _cells(t)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(["## harness report by device class", "", *lines, "",
                      "Figures per device class; no verdicts across classes.", "",
                      *[f"- {x}" for x in pays_lines(t)]]) + "\n"
