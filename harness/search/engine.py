"""The budgeted multi-objective search loop.

Sampler: optuna's ``TPESampler`` in its multi-objective form (MOTPE), ``multivariate`` and
``group`` on. A search space here is a tree (first the technique or pipeline, then that
entry's own options), and a 20-minute budget on a CPU buys tens of trials, not the
thousands an evolutionary population needs: NSGA-II's crossover works on a fixed joint
space and spends its first generation (50 trials by default) at random, while grouped TPE
models each branch's options separately and is sample-efficient from ~10 trials on.
Constraints go to the sampler too (``constraints_func``), so it learns where the feasible
region is.

Determinism: trial k asks a sampler seeded ``seed * 100003 + k`` over the stored history,
so the k-th spec depends only on the seed and the k-1 trials before it. A resumed run
marks the interrupted trial failed and asks again with the same k: it gets the same spec,
and a spec already measured (``search/points.jsonl``) is never measured twice.

Per trial: compress, then the cheap proxy (exact size, perplexity on a few windows scaled
by the reference's full/proxy ratio). A point whose proxy estimate misses a constraint, or
is dominated by a measured point, by more than ``margin`` stops there ("proxy" points: the
sampler learns the estimate, the report shows them apart); every other point gets the full
evaluation of every objective and constraint metric.
"""
from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.metrics import METRICS
from harness.records import Record, RecordWriter
from harness.search import store
from harness.search.evaluator import Evaluator, proxy_metrics
from harness.search.frontier import (
    Point,
    closest,
    dominates,
    frontier,
    parse_constraint,
    parse_objectives,
    write_frontier,
)
from harness.search.space import Space

MAX_REPEATS = 50  # consecutive trials that only re-propose measured specs: the space is exhausted


def _trial_constraints() -> bool:
    """optuna >= 5 takes constraints on the trial (``set_constraint``); 4.x through the sampler."""
    from optuna.trial import Trial

    return hasattr(Trial, "set_constraint")


class BudgetError(ValueError):
    """A budget that cannot cover one evaluation."""


@dataclass
class Outcome:
    """How a search ended: ``status`` complete, or infeasible (no point met the constraints)."""

    status: str
    frontier: list[Point]
    closest: list[Point]
    points: list[Point]
    trials: int
    evaluations: int
    spent_s: float
    stop_reason: str


class Search:
    """One search over ``space`` in ``run_dir`` (new, or resumed when it holds a search)."""

    def __init__(self, cfg: store.SearchConfig, space: Space, evaluator: Evaluator, run_dir: str | Path, *,
                 run_id: str = "", log: Callable[[str], None] = lambda s: None) -> None:
        self.cfg, self.space, self.ev, self.run_dir, self.log = cfg, space, evaluator, Path(run_dir), log
        self.objectives = parse_objectives(cfg.objectives, evaluator.kind)
        self.constraints = [parse_constraint(c, evaluator.kind) for c in cfg.constraints]
        self.metrics = list(dict.fromkeys([o.metric for o in self.objectives] + [c.metric for c in self.constraints]))
        self.proxy = proxy_metrics(self.metrics)
        self.points: dict[str, Point] = {p.spec: p for p in store.read_points(self.run_dir)}
        self.evaluations = 0  # compress + measure runs in this process (what resume must not repeat)
        resumed = (self.run_dir / store.SEARCH_JSON).is_file()
        self.state = store.read_state(self.run_dir) if resumed else store.SearchState(cfg, run_id)
        self.state.config = cfg
        self.ref: dict[str, Record] = {}
        self.ref_proxy: dict[str, Record] = {}
        self._t0 = time.perf_counter()
        self._spent0 = self.state.spent_s
        self._writer: RecordWriter | None = None

    # -- time -------------------------------------------------------------------------------
    def spent(self) -> float:
        return self._spent0 + time.perf_counter() - self._t0

    def _fits(self) -> tuple[bool, str]:
        if self.cfg.trials is not None and self.state.trials_done >= self.cfg.trials:
            return False, f"{self.cfg.trials} trial(s) done"
        if self.cfg.budget_s is None:
            return True, ""
        walls = [p.info.get("wall_s", 0.0) for p in self.points.values() if not p.reference]
        est = statistics.median(walls) if walls else 0.0
        left = self.cfg.budget_s - self.spent()
        return (left > est and left > 0), f"budget spent ({self.spent():.0f} of {self.cfg.budget_s:.0f} s)"

    # -- measuring --------------------------------------------------------------------------
    def _values(self, recs: dict[str, Record]) -> dict[str, float | None]:
        return {m: (r.value if r.status == "ok" else None) for m, r in recs.items()}

    def _violation(self, values: dict[str, float | None]) -> float:
        ref = self._values(self.ref)
        return sum(max(0.0, min(c.violation(values.get(c.metric), ref.get(c.metric)), 1e9)) for c in self.constraints)

    def _estimate(self, proxy: dict[str, Record]) -> dict[str, float | None]:
        """Proxy values on the full protocol's scale: accuracy times the reference's full/proxy ratio."""
        out = {}
        for m, v in self._values(proxy).items():
            full, short = self.ref.get(m), self.ref_proxy.get(m)
            scale = (full.value / short.value) if (not m.startswith("size.") and full is not None and short is not None
                                                    and full.value and short.value) else 1.0
            out[m] = None if v is None else v * scale
        return out

    def _screen(self, est: dict[str, float | None]) -> str:
        """Why the proxy estimate rules the point out ("" to measure it in full)."""
        ref = self._values(self.ref)
        for c in self.constraints:
            if c.metric in est and c.violation(est[c.metric], ref.get(c.metric)) > self.cfg.margin:
                return f"proxy estimate misses {c.text}"
        if all(o.metric in est for o in self.objectives):
            k = 1 + self.cfg.margin  # the estimate given the benefit of the doubt (size is exact)
            better = {m: v if v is None or m.startswith("size.") else v * k if METRICS.get(m).higher_is_better
                      else v / k for m, v in est.items()}
            cand = Point("?", better, violation=0.0)
            for q in self.points.values():
                if q.feasible and dominates(q, cand, self.objectives):
                    return f"proxy estimate dominated by {q.spec} beyond the {self.cfg.margin:.0%} margin"
        return ""

    def _write(self, recs: list[Record], desc: dict[str, Any], point: Point) -> None:
        if self._writer is None:
            self._writer = RecordWriter(self.run_dir, worker="search")
        profile = "search" if point.fidelity != "proxy" else "search-proxy"
        ctx = {**self.ev.context(), "run_id": self.state.run_id, "suite": "search",
               "test_id": f"search::{point.spec}", **{k: desc[k] for k in ("technique", "spec", "config", "storage")}}
        extra = {"profile": profile, "search": {k: v for k, v in point.info.items() if k != "wall_s"}
                 | {"fidelity": point.fidelity}}
        self._writer.write([replace(r, **ctx, extra={**r.extra, **extra}) for r in recs])
        point.info["record_spec"], point.info["profile"] = desc["spec"], profile
        point.info["model"] = ctx["model"]

    def evaluate(self, spec: str, info: dict[str, Any]) -> Point:
        """Compress and measure ``spec`` (proxy first), write its records and its point."""
        t0 = time.perf_counter()
        self.evaluations += 1
        try:
            handle = self.ev.compress(spec)
            desc = self.ev.describe(handle)
            proxy = self.ev.measure(handle, self.proxy, "proxy") if self.proxy else {}
            est = self._estimate(proxy)
            why = self._screen(est) if proxy else ""
            recs = proxy if why else self.ev.measure(handle, self.metrics, "full")
            values = est if why else self._values(recs)
            point = Point(spec, values, "proxy" if why else "full", self._violation(values), info=dict(info))
            if why:
                point.info["screened"] = why
                recs = {m: replace(r, extra={**r.extra, "max_tokens": self.cfg.proxy_tokens, "note": why})
                        for m, r in recs.items()}
        except (ValueError, RuntimeError, NotImplementedError) as e:  # refused combination, device, OOM
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            point = Point(spec, {m: None for m in self.metrics}, "error", float("inf"), info={**info, "error": msg})
            desc = {"technique": spec.split(":", 1)[0].strip(), "spec": spec, "config": {}, "storage": "",
                    "records": []}
            recs = {m: Record.na(m, f"compression or measurement failed: {msg}") for m in self.metrics}
        point.info["wall_s"] = round(time.perf_counter() - t0, 3)
        self._write(desc["records"] + list(recs.values()), desc, point)
        store.append_point(self.run_dir, point)
        self.points[spec] = point
        self.log(f"  {point.fidelity:5} {spec}: " + ", ".join(
            f"{m}={v:.5g}" for m, v in point.values.items() if v is not None) + f" ({point.info['wall_s']:.1f} s)")
        return point

    # -- the reference ----------------------------------------------------------------------
    def reference(self) -> float:
        """Measure the uncompressed model (full and proxy) unless stored; returns its wall time."""
        t0 = time.perf_counter()
        handle = self.ev.compress("none")
        self.ref = self.ev.measure(handle, self.metrics, "full")
        self.ref_proxy = self.ev.measure(handle, self.proxy, "proxy") if self.proxy else {}
        wall = time.perf_counter() - t0
        for m, r in self.ref.items():  # an objective or constraint this machine cannot measure: say so now
            if r.status != "ok":
                raise ValueError(f"{m} is not measured here ({r.reason or r.status}); "
                                 f"choose objectives and constraints this device measures")
        if "none" not in self.points:
            if self.cfg.budget_s is not None and self.cfg.budget_s < 2 * wall:
                raise BudgetError(f"budget {self.cfg.budget_s:g} s cannot cover one evaluation: measuring the "
                                  f"uncompressed reference alone took {wall:.1f} s (and a point also compresses)")
            values = self._values(self.ref)
            p = Point("none", values, "full", self._violation(values), reference=True,
                      info={"wall_s": round(wall, 3)})
            self._write(list(self.ref.values()), self.ev.describe(handle), p)
            store.append_point(self.run_dir, p)
            self.points["none"] = p
        return wall

    # -- the loop ---------------------------------------------------------------------------
    def _sampler(self, k: int):
        from optuna.samplers import TPESampler

        cons = None
        if self.constraints and not _trial_constraints():  # optuna 4: through the sampler
            def cons(t):  # <= 0: met (optuna's convention); stored before tell
                return t.user_attrs.get("constraints", [0.0] * len(self.constraints))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate / group / constraints_func are "experimental"
            return TPESampler(seed=self.cfg.seed * 100_003 + k, multivariate=True, group=True,
                              constraints_func=cons, n_startup_trials=self.cfg.startup_trials)

    def _study(self):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        path = self.run_dir / store.JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name="search", storage=JournalStorage(JournalFileBackend(str(path))),
                                    directions=[o.direction for o in self.objectives], load_if_exists=True,
                                    sampler=self._sampler(0))
        trials = study.get_trials(deepcopy=False)
        # the count the sampler seeds come from: trials told (not the one an interruption cut short)
        self.state.trials_done = sum(1 for t in trials if t.user_attrs.get("done") and t.state != TrialState.RUNNING)
        for t in trials:
            if t.state == TrialState.RUNNING:  # interrupted: failed here, asked again with the same seed
                study.tell(t.number, state=TrialState.FAIL)
        return study

    def _trial(self, study) -> bool:
        """Ask, measure (or reuse), tell. False when the spec was already measured."""
        from optuna.trial import TrialState

        k = self.state.trials_done
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.sampler = self._sampler(k)
            trial = study.ask()
        spec = self.space.suggest(trial)
        new = spec not in self.points
        p = self.evaluate(spec, {"trial": k}) if new else self.points[spec]
        trial.set_user_attr("spec", spec)
        trial.set_user_attr("done", True)
        vals = [p.values.get(o.metric) for o in self.objectives]
        ref = self._values(self.ref)
        viol = [min(c.violation(p.values.get(c.metric), ref.get(c.metric)), 1e9) for c in self.constraints]
        trial.set_user_attr("constraints", viol)
        if _trial_constraints():  # optuna 5: on the trial; TPE reads them from there
            for c, v in zip(self.constraints, viol):
                trial.set_constraint(c.text, v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if p.fidelity == "error" or any(v is None for v in vals):
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, vals)
        self.state.trials_done = k + 1
        return new

    def _save(self, status: str = "running", reason: str = "") -> None:
        self.state.spent_s = round(self.spent(), 3)
        self.state.status, self.state.stop_reason = status, reason
        store.write_state(self.run_dir, self.state)
        rows = [{"spec": p.info.get("record_spec", p.spec), "search_spec": p.spec, "model": p.info.get("model", ""),
                 "profile": p.info.get("profile", "search"), "values": p.values, "reference": p.reference,
                 "trial": p.info.get("trial"), "seed_spec": bool(p.info.get("seed"))}
                for p in frontier(self.points.values(), self.objectives)]
        write_frontier(self.run_dir, rows, objectives=[o.metric for o in self.objectives],
                       constraints=[c.text for c in self.constraints], status=status,
                       reference={m: v for m, v in self._values(self.ref).items()})
        from harness.rundir import read_run_info, write_run_info

        info = read_run_info(self.run_dir)
        run_status = status if status in ("running", "partial") else "complete"
        extra: dict[str, Any] = {} if "started" in info else {"started": time.time()}
        if "fingerprint" not in info and hasattr(self.ev, "fingerprint"):
            extra.update(self.ev.fingerprint())
        write_run_info(self.run_dir, run_id=self.state.run_id, status=run_status, profile="search",
                       models=[self.cfg.model], search_status=status, partial_reason=reason if status == "partial"
                       else "", finished=None if status == "running" else time.time(), **extra)

    def run(self) -> Outcome:
        """Run until the budget or trial count is spent; returns the frontier (feasible,
        non-dominated points, the reference included) and how it ended."""
        self.reference()
        self.state.sessions += 1
        self._save()
        reason = ""
        try:
            for spec in self.space.seeds:
                if spec not in self.points:
                    ok, reason = self._fits()
                    if not ok:
                        break
                    self.evaluate(spec, {"seed": True})
                    self._save()
            study, repeats = self._study(), 0
            while True:
                ok, reason = self._fits()
                if not ok:
                    break
                repeats = 0 if self._trial(study) else repeats + 1
                self._save()
                if repeats >= MAX_REPEATS:
                    reason = f"the space looks exhausted ({MAX_REPEATS} trials in a row re-proposed measured specs)"
                    break
        except BaseException:
            self._save("partial", "interrupted: resume with harness search --resume " + str(self.run_dir))
            raise
        searched = [p for p in self.points.values() if not p.reference]
        status = "complete" if not self.constraints or any(p.feasible for p in searched) else "infeasible"
        self._save(status, reason)
        return Outcome(status, frontier(self.points.values(), self.objectives),
                       closest(self.points.values()) if status == "infeasible" else [], list(self.points.values()),
                       self.state.trials_done, self.evaluations, self.state.spent_s, reason)
