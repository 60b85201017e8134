"""``harness search``: budgeted multi-objective search for compression configurations, and
``harness search --show RUN`` (the frontier table of a search run).

Imported by ``harness.cli`` (EXTENSIONS). Bad input (an unknown objective or constraint
metric, a malformed space, a budget that cannot cover one evaluation) raises ValueError ->
one line, exit 2. A search where no point met the constraints exits 1 after printing the
closest points; an empty success is never reported.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from harness.cli import UsageError, command

EXAMPLES = textwrap.dedent("""\
    examples:
      harness search --model harness-tiny --budget 20m --constraint "ppl.window<=+5%"
      harness search --objectives size.bytes,ppl.window,latency.decode_ms_per_token --budget 1h
      harness search --space my_space.yaml --trials 40 --seed 3 --out reports/s1
      harness search --resume reports/s1          continue an interrupted search (nothing re-measured)
      harness search --show reports/s1            the frontier table
    the default space is harness/search/default_space.yaml; the frontier is in RUN/frontier.json
    and marked in RUN/report.html
    """)
_FIXED = ("model", "space", "objectives", "seed")  # settings a resumed search takes from its run


def _fmt(metric: str, v: float | None) -> str:
    from harness.metrics import METRICS

    if v is None:
        return "N/A"
    col = METRICS.get(metric).column
    return col.format(v) if col is not None else f"{v:.5g}"


def frontier_table(data: dict) -> list[str]:
    """Aligned text rows of a ``frontier.json``: spec, each objective, where it came from."""
    objs = list(data.get("objectives") or [])
    header = ["#", "spec", *objs, "from"]
    body = []
    for i, r in enumerate(data.get("frontier") or [], 1):
        src = "reference" if r.get("reference") else "seed" if r.get("seed_spec") else f"trial {r.get('trial')}"
        vals = r.get("values") or {}
        body.append([str(i), str(r.get("search_spec") or r.get("spec")), *[_fmt(m, vals.get(m)) for m in objs], src])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *map(line, body)]


def _show(run_dir: str) -> int:
    from harness.search.frontier import read_frontier
    from harness.search.store import read_state

    state = read_state(run_dir)
    data = read_frontier(run_dir)
    if not data:
        raise UsageError(f"{run_dir} has no readable frontier.json")
    c = state.config
    print(f"search {run_dir}: {state.status}" + (f" ({state.stop_reason})" if state.stop_reason else "")
          + f"; {state.trials_done} trials, {state.spent_s:.0f} s over {state.sessions} session(s), seed {c.seed}")
    print(f"objectives {', '.join(c.objectives)}" + (f"; constraints {', '.join(c.constraints)}"
                                                      if c.constraints else ""))
    for line in frontier_table(data):
        print(line)
    return 0


def _threads(value: str | None) -> None:
    if value is None:
        return
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise UsageError(f"--threads {value!r}: expected 'auto' or an integer >= 1")
    import torch

    from harness.options import auto_threads

    torch.set_num_threads(auto_threads() if value == "auto" else int(value))


def _config(a: argparse.Namespace):
    """(SearchConfig, run directory, resumed?) from the arguments, before any model loads."""
    from harness import rundir
    from harness.search.frontier import parse_budget, parse_constraint, parse_objectives
    from harness.search.space import DEFAULT_SPACE
    from harness.search.store import SearchConfig, read_state

    budget = parse_budget(a.budget) if a.budget is not None else None
    if a.resume:
        if a.out:
            raise UsageError("--resume RUN_DIR continues that run; drop --out")
        state = read_state(a.resume)
        old = state.config
        for k in _FIXED + ("constraint",):
            given = getattr(a, k)
            if k == "space" and given:
                given = str(Path(given).resolve())
            stored = {"constraint": list(old.constraints), "objectives": ",".join(old.objectives)}.get(k, getattr(
                old, k, None))
            if given not in (None, []) and given != stored:
                raise UsageError(f"--resume continues with the run's own --{k} ({stored!r}); drop --{k} {given!r}")
        import dataclasses

        cfg = dataclasses.replace(old, budget_s=budget if budget is not None else old.budget_s,
                                  trials=a.trials if a.trials is not None else old.trials)
        return cfg, Path(a.resume), state.run_id
    objectives = tuple(o.metric for o in parse_objectives(a.objectives or "size.bytes,ppl.window"))
    for c in a.constraint:
        parse_constraint(c)
    from harness.models.zoo import check_model_name

    model = a.model or "harness-tiny"
    check_model_name(model)
    cfg = SearchConfig(model=model, space=str(Path(a.space).resolve()) if a.space else str(DEFAULT_SPACE),
                       objectives=objectives, constraints=tuple(a.constraint), budget_s=budget, trials=a.trials,
                       seed=a.seed or 0, proxy_tokens=a.proxy_tokens or 1024,
                       full_tokens=a.max_tokens or 8192, device=a.device)
    run_id = rundir.new_run_id()
    run_dir = Path(a.out) if a.out else Path(a.reports) / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        hint = f"; continue it with --resume {run_dir}" if (run_dir / "search.json").is_file() else ""
        raise UsageError(f"--out {run_dir} exists and is not empty{hint}")
    return cfg, run_dir, run_id


@command("search", "budgeted multi-objective search over techniques and pipelines: a Pareto frontier")
def _search_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.add_argument("--model", default=None, help="model name or local HF directory (default: harness-tiny)")
    p.add_argument("--space", default=None, help="search space YAML (default: the packaged default_space.yaml)")
    p.add_argument("--objectives", default=None, metavar="M,M[,M]",
                   help="metrics to optimise, each in its registered direction (default: size.bytes,ppl.window)")
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help='e.g. "ppl.window<=+5%%" (vs the uncompressed reference) or "size.bytes<=2e6" (repeatable)')
    p.add_argument("--budget", default=None, help="wall time, e.g. 90s, 20m, 1h30m")
    p.add_argument("--trials", type=int, default=None, help="stop after N sampler trials (reproducible stop)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default 0)")
    p.add_argument("--out", default=None, help="new run directory (default: REPORTS/<run-id>)")
    p.add_argument("--reports", default="reports", help="where run directories go (default: reports)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted search")
    p.add_argument("--show", default=None, metavar="RUN_DIR", help="print the frontier table of a search run")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", default=None, metavar="N", help="torch CPU threads (an integer >= 1, or 'auto')")
    p.add_argument("--proxy-tokens", type=int, default=None, help="tokens of the proxy perplexity (default 1024)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens of the full protocol (default 8192)")
    p.add_argument("--no-report", action="store_true", help="skip rendering report.html")

    def run(a: argparse.Namespace) -> int:
        if a.show:
            return _show(a.show)
        cfg, run_dir, run_id = _config(a)
        import importlib.util

        if importlib.util.find_spec("optuna") is None:
            raise UsageError("harness search needs optuna: pip install 'llm-compression-harness[search]'")
        from harness.search.space import load_space

        space = load_space(cfg.space)  # a malformed space fails before the model loads
        for note in space.notes:
            print(f"harness search: note: {note}", file=sys.stderr)
        _threads(a.threads)
        from harness.search.engine import Search
        from harness.search.evaluator import ModelEvaluator

        ev = ModelEvaluator(cfg.model, device=cfg.device, proxy_tokens=cfg.proxy_tokens, full_tokens=cfg.full_tokens)
        print(f"harness search: {run_dir} ({'resumed' if a.resume else 'new'}; "
              f"{len(space.entries)} families/pipelines, seed {cfg.seed})", flush=True)
        s = Search(cfg, space, ev, run_dir, run_id=run_id, log=lambda m: print(m, flush=True))
        out = s.run()
        print(f"harness search: {out.trials} trials, {out.evaluations} evaluated in this session, "
              f"{len(out.points)} points in all, {out.spent_s:.0f} s; stopped: {out.stop_reason or 'done'}")
        from harness.search.frontier import read_frontier

        for line in frontier_table(read_frontier(run_dir)):
            print(line)
        if not a.no_report:
            from harness.report.html import write_report

            print(f"harness search: report {write_report(run_dir)}")
        if out.status == "infeasible":
            print(f"harness search: no point met the constraint ({'; '.join(cfg.constraints)}); closest points:",
                  file=sys.stderr)
            for p_ in out.closest:
                vals = ", ".join(f"{m}={_fmt(m, v)}" for m, v in p_.values.items())
                print(f"  {p_.spec}: {vals} (misses by {p_.violation:.1%})", file=sys.stderr)
            return 1
        return 0

    p.set_defaults(handler=run)
