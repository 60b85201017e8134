"""Every metric the harness knows, each one registered unit (in the spirit of lm-eval's
``register_metric``): name, unit, direction, the model kinds it applies to, its default
baseline tolerance, its report column, and either the producer that measures it or the
rule that derives it from the uncompressed reference.

``harness.evaluation`` measures through ``producer`` (a name in
``harness.measure.producers``, so this table stays importable without torch), ``harness.baselines`` takes
``tolerance``, the reports take ``column``, and the bench fixture and ``harness eval``
take ``derive``. Adding a metric is one ``Metric(...)`` here (plus, for a new kind of
measurement, its producer in ``harness/measure/producers.py``) and its test.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from harness.registry import Registry

CAUSAL, ENCODER = ("causal-lm",), ("encoder",)
ANY_KIND = ("causal-lm", "encoder")


@dataclass(frozen=True)
class Column:
    """How the report shows a metric: header, number format, % change vs the reference,
    and whether the compact terminal/Markdown table includes it."""

    header: str
    fmt: str = ".2f"  # a format spec, or "MB" (bytes as megabytes) or "x" (a ratio, 2 decimals)
    delta: bool = False
    terminal: bool = False

    def format(self, v: float) -> str:
        if self.fmt == "MB":
            return f"{v / 1e6:.2f} MB"
        if self.fmt == "x":
            return f"{v:.2f}x"
        return format(v, self.fmt)


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    description: str
    kinds: tuple[str, ...] = ANY_KIND  # model kinds the metric applies to
    tolerance: str = "10%"  # default baseline tolerance: relative "2%" or absolute "0.01"
    column: Column | None = None  # None: in the records and the per-record table only
    producer: str | None = None  # name in harness.measure.producers.PRODUCERS measuring it, or None ...
    derive: tuple[str, bool] | None = None  # ... (source metric, model/reference if True else ref/model)
    default: bool = False  # measured when no metric list is given (for the kinds it applies to)


MetricInfo = Metric  # the name records and older callers use

_TASK_METRIC = re.compile(r"task\.([A-Za-z0-9_\-]+)\.(acc|acc_norm|recovery)")
TASK_FIGURES = ("acc", "acc_norm", "recovery")  # what --lm-eval-tasks records per task


def task_metric(task: str, which: str = "acc", column: bool = False) -> Metric:
    """Zero-shot accuracy on one lm-eval task (``task.<task>.acc`` / ``.acc_norm``), measured
    by ``harness.measure.tasks``; its stderr and per-item results are in the record."""
    if which == "recovery":
        return Metric(f"task.{task}.recovery", "x", True, f"lm-eval {task}: accuracy / the reference's accuracy "
                      "in the same run (llm-compressor's recovery)", CAUSAL, "2%",
                      Column(f"{task} recovery", ".3f") if column else None, derive=(f"task.{task}.acc", True))
    norm = " (length-normalized)" if which == "acc_norm" else ""
    return Metric(f"task.{task}.{which}", "fraction", True, f"lm-eval {task}: zero-shot accuracy{norm}",
                  CAUSAL, "0.02", Column(f"{task} {which}", ".3f") if column else None, "lm_eval_tasks")


class _Metrics(Registry[Metric]):
    """The registry, where any lm-eval task's ``task.<task>.acc`` / ``.acc_norm`` registers on
    first use (a run directory written with ``--lm-eval-tasks`` is readable by every process)."""

    def _task(self, name: object) -> bool:
        m = _TASK_METRIC.fullmatch(name) if isinstance(name, str) else None
        if m and name not in self._items:
            self.register(name, task_metric(m.group(1), m.group(2)))
        return m is not None

    def get(self, name: str) -> Metric:
        self._task(name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or self._task(name)


METRICS: Registry[Metric] = _Metrics("metric")

for _m in [
    Metric("size.bytes", "B", False, "serialized bytes of the stored state (safetensors)", tolerance="1%",
           column=Column("size", "MB", terminal=True), producer="size", default=True),
    Metric("size.params", "count", False, "stored parameter elements (shared counted once)", tolerance="1%",
           producer="size", default=True),
    Metric("size.bits_per_param", "bits", False,
           "stored bits of compressible weights (incl. scales, zeros, metadata) per logical weight",
           tolerance="1%", column=Column("bits/w", ".2f", terminal=True), producer="size", default=True),
    Metric("size.compression_ratio", "x", True, "reference bytes / compressed bytes", tolerance="1%",
           column=Column("ratio", "x", terminal=True), derive=("size.bytes", False)),
    Metric("ppl.window", "ppl", False, "perplexity, non-overlapping fixed windows", CAUSAL, "1%",
           Column("ppl window", ".2f", delta=True, terminal=True), "ppl_window", default=True),
    Metric("ppl.recovery", "x", True, "the reference's window perplexity / the model's, in the same run "
           "(llm-compressor's recovery: 1 = nothing lost; immune to the eval text or reference moving)", CAUSAL, "1%",
           Column("ppl recovery", ".3f"), derive=("ppl.window", False)),
    Metric("ppl.lm_eval", "ppl", False, "token perplexity from lm-eval loglikelihood_rolling", CAUSAL, "2%",
           Column("ppl lm-eval", ".2f", delta=True), "ppl_lm_eval", default=True),
    Metric("ppl.unigram", "ppl", False, "add-one unigram baseline on the same tokens", CAUSAL, "2%",
           producer="ppl_unigram"),
    Metric("fidelity.kl", "nats", False, "mean per-token KL(reference || model)", CAUSAL, "0.01",
           Column("KL", ".4f", terminal=True), "fidelity", default=True),
    Metric("fidelity.top1", "fraction", True, "next-token argmax agreement with the reference", CAUSAL, "0.01",
           Column("top-1", ".3f"), "fidelity", default=True),
    Metric("fidelity.cosine", "cosine", True, "mean embedding cosine vs the reference (encoders)", ENCODER,
           "0.005", Column("cosine", ".4f", terminal=True), "fidelity", default=True),
    task_metric("harness_cloze", "acc", column=True), task_metric("harness_cloze", "acc_norm"),
    task_metric("harness_cloze", "recovery"),
    Metric("latency.prefill_ms", "ms", False, "time to first token (prompt forward)", CAUSAL, "25%",
           Column("prefill ms", ".1f"), "latency", default=True),
    Metric("latency.decode_ms_per_token", "ms", False, "time per output token with KV cache", CAUSAL, "25%",
           producer="latency", default=True),
    Metric("latency.decode_tok_s", "tok/s", True, "decode throughput (batch x tokens / s)", CAUSAL, "25%",
           Column("decode tok/s", ".1f", terminal=True), "latency", default=True),
    Metric("latency.forward_ms", "ms", False, "encoder forward latency", ENCODER, "25%",
           Column("forward ms", ".2f", terminal=True), "latency", default=True),
    Metric("latency.speedup_prefill", "x", True, "reference prefill ms / model prefill ms", CAUSAL, "10%",
           Column("prefill speed-up", "x"), derive=("latency.prefill_ms", False)),
    Metric("latency.speedup_decode", "x", True, "model decode tok/s / reference decode tok/s", CAUSAL, "10%",
           Column("decode speed-up", "x", terminal=True), derive=("latency.decode_tok_s", True)),
    Metric("memory.peak_rss_mb", "MiB", False, "peak resident set of the measured step", tolerance="25%",
           column=Column("RSS MiB", ".0f"), producer="peak_rss", default=True),
    Metric("memory.step_peak_mb", "MiB", False,
           "memory the measured step added on top of what was resident (activations, KV cache, temporaries)",
           tolerance="25%+8", column=Column("step MiB", ".1f"), producer="peak_rss", default=True),
    Metric("memory.model_mb", "MiB", False, "bytes of the model's parameters and buffers in memory (shared once)",
           tolerance="1%", column=Column("model MiB", ".2f"), producer="model_memory", default=True),
    Metric("memory.gpu_peak_mb", "MiB", False, "torch peak allocated CUDA memory", tolerance="25%",
           column=Column("GPU MiB", ".1f"), producer="gpu_memory", default=True),
    Metric("memory.nvml_used_mb", "MiB", False, "NVML device memory used", tolerance="25%",
           producer="gpu_memory"),
    Metric("memory.kv_cache_mb", "MiB", False, "bytes held by the KV cache after decoding", CAUSAL, "25%",
           Column("KV MiB", ".3f"), "kv_cache", default=True),
    Metric("energy.j_per_token", "J/tok", False, "NVML energy counter delta per generated token", CAUSAL, "15%",
           Column("J/token", ".4f"), "energy", default=True),
    Metric("compress.wall_s", "s", False, "wall time of the compression step", tolerance="200%",
           column=Column("compress s", ".2f", terminal=True), producer="compression"),
    Metric("compress.peak_rss_mb", "MiB", False, "peak RSS the compression step added (VmHWM high-water mark)",
           tolerance="64", producer="compression"),
    # What a technique that trains (distill, gqa uptraining) did: from CompressionResult.figures.
    Metric("train.steps", "count", False, "optimizer steps of the compression step's training", tolerance="0",
           producer="compression"),
    Metric("train.tokens", "tokens", False, "training tokens seen (steps x batch x seq_len)", tolerance="0",
           producer="compression"),
    Metric("train.wall_s", "s", False, "wall time of the training loop", tolerance="200%", producer="compression"),
    Metric("train.loss_first", "loss", False, "training loss of the first step", tolerance="10%",
           producer="compression"),
    Metric("train.loss_last", "loss", False, "training loss, mean of the last 10 steps", tolerance="10%",
           producer="compression"),
]:
    METRICS.register(_m.name, _m)


def metric(name: str) -> Metric:
    """The registered metric ``name`` (an unknown name is a one-line "did you mean" error)."""
    return METRICS.get(name)


def ordered() -> list[Metric]:
    """Every metric in registration order: the report's column order."""
    return METRICS.ordered()


def defaults(kind: str) -> list[str]:
    """The metrics measured for a model of ``kind`` when none are named."""
    return [m.name for m in METRICS.ordered() if m.default and kind in m.kinds]


def applies(name: str, kind: str) -> bool:
    return kind in METRICS.get(name).kinds


def derived() -> dict[str, tuple[str, bool]]:
    """{derived metric: (source metric, model/reference?)} for every derived metric."""
    return {m.name: m.derive for m in METRICS.ordered() if m.derive}
