"""A stub evaluator for search tests: deterministic figures computed from the spec, and a
count of every compression, so tests can prove what was (not) measured again."""
from __future__ import annotations

import time

from harness.records import Record


def figures(spec: str) -> tuple[float, float]:
    """(size.bytes, ppl.window) of a spec: fewer bits -> smaller and worse; bigger groups ->
    a little smaller and a little worse. The reference: 32000 B at ppl 10."""
    if spec == "none":
        return 32000.0, 10.0
    opts = dict(kv.split("=") for kv in spec.split(":", 1)[1].split(",")) if ":" in spec else {}
    bits, group = int(opts.get("bits", 4)), int(opts.get("group", 128))
    return 1000.0 * bits + 64000.0 / group, 10.0 + 2.0 ** (8 - bits) / 4 + group / 256


class StubEvaluator:
    kind = "causal-lm"

    def __init__(self, *, interrupt_at: int | None = None, reference_delay: float = 0.0,
                 proxy_bias: float = 1.1) -> None:
        self.compressions: list[str] = []
        self.measured: list[tuple[str, str]] = []  # (spec, fidelity)
        self.interrupt_at = interrupt_at
        self.reference_delay = reference_delay
        self.proxy_bias = proxy_bias

    def context(self) -> dict:
        return {"model": "stub", "device": "stub-cpu", "device_class": "stub-cpu"}

    def compress(self, spec: str) -> str:
        if spec != "none":
            if self.interrupt_at is not None and len(self.compressions) + 1 == self.interrupt_at:
                raise KeyboardInterrupt
            self.compressions.append(spec)
        return spec

    def measure(self, handle: str, metrics: list[str], fidelity: str) -> dict[str, Record]:
        if handle == "none":
            time.sleep(self.reference_delay)
        else:
            self.measured.append((handle, fidelity))
        size, ppl = figures(handle)
        ppl = ppl * (self.proxy_bias if fidelity == "proxy" else 1.0)
        vals = {"size.bytes": size, "ppl.window": ppl, "latency.decode_ms_per_token": 1.0 + size / 32000}
        return {m: Record(m, vals[m]) if m in vals else Record.na(m, "stub does not measure it") for m in metrics}

    def describe(self, handle: str) -> dict:
        return {"technique": handle.split(":")[0], "spec": handle, "config": {}, "storage": "packed",
                "records": []}
