"""Markdown summary of a run for CI logs (GitHub job summaries render it)."""
from __future__ import annotations

from pathlib import Path

from harness.baselines.judge import Verdict
from harness.report.summary import LEGEND, RunSummary, summarize, table


def _esc(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_from(s: RunSummary) -> str:
    lines = [f"## harness run {_esc(s.info.get('run_id', s.run_dir.name))}", ""]
    if s.status != "complete":
        lines += [f"> **Partial run:** {_esc(s.partial_reason)}", ""]
    if s.skipped:
        lines += [f"> **Damaged records:** {len(s.skipped)} line(s) skipped; first: {_esc(s.skipped[0])}", ""]
    oc = s.outcome_counts()
    if oc:
        lines += ["Tests: " + ", ".join(f"{n} {k}" for k, n in sorted(oc.items())), ""]
    header, body = table(s.rows, s.columns)
    lines.append("| " + " | ".join(map(_esc, header)) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(map(_esc, row)) + " |" for row in body]
    vc = s.verdict_counts()
    if vc:
        lines += ["", "Verdicts vs baseline: " + ", ".join(f"{k} {vc[k]}" for k in sorted(vc)), "",
                  f"_{_esc(LEGEND)}_"]
    if s.host_note():
        lines += ["", f"> {_esc(s.host_note())}"]
    if s.info.get("baseline_source"):
        lines += ["", f"Baseline: {_esc(s.info['baseline_source'])}"
                  + (f" ({_esc(s.info['lock_note'])})" if s.info.get("lock_note") else "")]
    if s.speed_hint():
        lines += ["", _esc(s.speed_hint())]
    reg = [v for v in s.verdicts if v.status == "regressed"]
    if reg:
        lines += ["", "**Regressions**", ""] + [f"- {_esc(v.line())}" for v in reg]
    dc = sorted({r.device_class for r in s.records if r.device_class})
    lines += ["", f"{len(s.records)} records; device class {', '.join(dc) or 'unknown'}; "
              f"simulated storage (fake-quant, mask) brings no real size or speed saving.", ""]
    return "\n".join(lines)


def render_markdown(run_dir: str | Path, verdicts: list[Verdict] | None = None, *,
                    skip_bad_lines: bool = False) -> str:
    """The Markdown summary of ``run_dir`` with ``verdicts`` (default: those it stored)."""
    return markdown_from(summarize(run_dir, verdicts, skip_bad_lines=skip_bad_lines))
