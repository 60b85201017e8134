"""How a search measures one spec: through ``harness.evaluation`` (the path ``harness eval``,
suites and benchmarks share), at two fidelities.

- ``proxy``: the accuracy protocols on a few windows (``proxy_tokens``); size is exact and
  costs nothing, so the proxy is size plus a short perplexity.
- ``full``: every objective and constraint metric under the full protocol (the default
  suite's quick settings: 8192 tokens, the quick latency profile), so a search point and a
  suite point of the same spec are the same figures.

The uncompressed reference is measured once per fidelity and cached; every derived ratio
and relative constraint uses it. ``Evaluator`` is the interface; tests pass a stub.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from harness.records import Record

PROXY_METRICS = ("size.", "ppl.", "fidelity.")  # cheap on a few windows (size: exact, free)


def proxy_metrics(metrics: list[str]) -> list[str]:
    """The metrics of ``metrics`` the proxy measures (latency, memory and tasks wait for the full pass)."""
    return [m for m in metrics if m.startswith(PROXY_METRICS)]


class Evaluator(Protocol):
    """What the search engine needs from a model: compress a spec, measure it."""

    kind: str

    def context(self) -> dict[str, Any]:
        """Record fields of every point: model, device fingerprint id, device class."""

    def compress(self, spec: str) -> Any:
        """A handle to the compressed model (``"none"``: the reference)."""

    def measure(self, handle: Any, metrics: list[str], fidelity: str) -> dict[str, Record]:
        """{metric: Record} of ``handle`` at ``fidelity`` ("proxy" or "full")."""

    def describe(self, handle: Any) -> dict[str, Any]:
        """technique, spec, config, storage and the compression records of ``handle``."""


@dataclass
class Fidelity:
    """Measurement settings of one fidelity."""

    max_tokens: int | None
    quick_latency: bool = True


class ModelEvaluator:
    """``Evaluator`` over one named model on one device, with the suite's calibration set
    (16 windows of 128 tokens, seed 0: what ``harness run --quick`` uses)."""

    def __init__(self, model: str, *, device: str = "cpu", proxy_tokens: int = 1024, full_tokens: int | None = 8192,
                 calibration: int = 16) -> None:
        from harness.models.zoo import load_model

        self.lm = load_model(model, device=device)
        self.kind = self.lm.kind
        self.device = device
        self.fidelities = {"proxy": Fidelity(proxy_tokens), "full": Fidelity(full_tokens)}
        self.calibration_n = calibration
        self._calib = None
        self._ref: dict[str, dict[str, Record]] = {"proxy": {}, "full": {}}

    def context(self) -> dict[str, Any]:
        from harness.measure.environment import device_class, fingerprint_id

        return {"model": self.lm.name, "device": fingerprint_id(self.device), "device_class": device_class(self.device)}

    def fingerprint(self) -> dict[str, Any]:
        """run.json's ``fingerprint`` and ``device_class`` (the report's environment section)."""
        from harness.measure.environment import device_class, fingerprint

        return {"fingerprint": fingerprint(self.device), "device_class": device_class(self.device)}

    def _calibration(self):
        if self._calib is None:
            from harness.calibration import get_calibration

            self._calib = get_calibration(self.lm.tokenizer, n=self.calibration_n, seq_len=128, seed=0)
        return self._calib

    def compress(self, spec: str) -> Any:
        from harness.evaluation import compress_model

        return compress_model(self.lm, spec, calibration=self._calibration, device=self.device)

    def _ctx(self, fidelity: str):
        from harness.config import EvalConfig, LatencyConfig
        from harness.evaluation import EvalContext

        f = self.fidelities[fidelity]
        lat = LatencyConfig(prompt_len=64, decode_tokens=16, budget_s=1.0, min_repeats=6) if f.quick_latency else None
        return EvalContext(lat or LatencyConfig(), EvalConfig(max_tokens=f.max_tokens))

    def _reference(self, fidelity: str, metrics: list[str]) -> dict[str, Record]:
        from harness.evaluation import evaluate

        cache = self._ref[fidelity]
        todo = [m for m in metrics if m not in cache]
        if todo:
            ctx = self._ctx(fidelity)
            ctx.reference = self.lm.model
            cache.update({r.metric: r for r in evaluate(self.lm, self.lm.model, todo, ctx)})
        return {m: cache[m] for m in metrics if m in cache}

    def measure(self, handle: Any, metrics: list[str], fidelity: str) -> dict[str, Record]:
        from harness.evaluation import measure_result

        recs = measure_result(self.lm, handle, metrics, self._ctx(fidelity), deltas=False,
                              reference=lambda ms: self._reference(fidelity, ms))
        return {r.metric: r for r in recs}

    def describe(self, handle: Any) -> dict[str, Any]:
        recs = [Record("compress.wall_s", handle.wall_s)]
        if handle.peak_rss_mb is not None:
            recs.append(Record("compress.peak_rss_mb", handle.peak_rss_mb))
        recs += [Record(k, v) for k, v in (handle.figures or {}).items()]
        return {"technique": handle.technique, "spec": handle.spec, "config": handle.config_dict,
                "storage": handle.storage, "records": recs if handle.technique != "none" else []}
