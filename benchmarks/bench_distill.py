"""Distillation and efficient-architecture benchmark (issue 14): students, distillation
losses, GQA conversion and the decode speed of half-depth students. Every figure comes
from the one compress -> evaluate path (``harness.evaluation.compress_and_measure``) and
is measured in this run; writes docs/results/distillation.md.

    .venv/bin/python benchmarks/bench_distill.py                 # full (about 20 min on 2 cores)
    .venv/bin/python benchmarks/bench_distill.py --steps 20 --out /tmp/d.md   # smoke run
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch
from _common import splice, table, write_doc

import harness
from harness.evaluation import compress_and_measure
from harness.measure.latency import ABTiming, decode_step_ms, interleaved_rounds
from harness.measure.size import linear_params

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train.steps", "train.tokens", "train.wall_s", "train.loss_first", "train.loss_last"]


def _run(lm, spec: str, metrics: list[str], calib) -> dict[str, object]:
    """Compress a copy of ``lm.model`` with ``spec`` and measure ``metrics``: {metric: Record}."""
    t0 = time.perf_counter()
    res, recs = compress_and_measure(lm, spec, metrics, calibration=calib, deltas=False)
    by = {r.metric: r for r in recs}
    by["_wall"] = time.perf_counter() - t0
    by["_result"] = res
    print(f"  {spec:70s} " + ", ".join(f"{m}={by[m].value:.4g}" for m in metrics if by[m].value is not None)
          + f" ({res.wall_s:.1f}s)", flush=True)
    return by


def _v(rec, fmt: str = ".3f") -> str:
    return "N/A" if rec is None or rec.value is None else format(rec.value, fmt)


def causal(steps: int, batch: int) -> tuple[str, dict[str, float], tuple[str, dict[str, list[float]]]]:
    """harness-tiny: a 2-layer student, distilled or trained without the teacher."""
    lm = harness.load_model("harness-tiny")
    calib = harness.get_calibration(lm.tokenizer, n=16, seq_len=128, seed=0)
    specs = causal_specs(steps, batch)
    ppl, rows, trained = {}, [], {}
    for label, spec in specs.items():
        r = _run(lm, spec, ["ppl.window", "size.bytes", *TRAIN], calib)
        ppl[label] = r["ppl.window"].value
        if label in DIAG:
            trained[DIAG[label]] = (spec, r["_result"].model)
        rows.append([label, f"`{spec}`", _v(r["ppl.window"], ".2f"), f"{r['size.bytes'].value / 1e6:.2f}",
                     _v(r["train.tokens"], ".0f"), _v(r["train.loss_first"]), _v(r["train.loss_last"]),
                     _v(r["train.wall_s"], ".1f") if spec != "none" else "-",
                     f"{r['_result'].wall_s:.1f}" if spec != "none" else "-"])
    md = table(["model", "spec", "ppl.window (validation)", "size MB", "train tokens", "loss first",
                "loss last (mean of 10)", "train s", "compress s"], rows)
    return md, ppl, hidden_table(lm, trained)


def causal_specs(steps: int, batch: int) -> dict[str, str]:
    """The harness-tiny rows: label -> spec."""
    common = f"layers=2,steps={steps},batch={batch}"
    return {
        "teacher (4 layers, uncompressed)": "none",
        "student, teacher init, untrained": "student:layers=2",
        "random init, CE only (no teacher)": f"distill:loss=logits,alpha=0,init=random,{common}",
        "teacher init, CE only (no teacher)": f"distill:loss=logits,alpha=0,{common}",
        "distilled: logits": f"distill:loss=logits,{common}",
        "distilled: logits+hidden": f"distill:loss=logits+hidden,{common}",
        "distilled: logits, data seed 1": f"distill:loss=logits,{common},seed=1",
        "distilled: logits+hidden, data seed 1": f"distill:loss=logits+hidden,{common},seed=1",
        "distilled: logits+hidden, origin map": f"distill:loss=logits+hidden,hidden_map=origin,{common}",
        "distilled: logits+hidden, origin map, data seed 1":
            f"distill:loss=logits+hidden,hidden_map=origin,{common},seed=1",
    }


def encoder(steps: int, batch: int) -> tuple[str, dict[str, float]]:
    """minilm-l6 -> 3-layer student, scored by embedding cosine to the teacher."""
    try:
        lm = harness.load_model("minilm-l6")
    except Exception as e:  # noqa: BLE001 - optional extra missing: say so, go on
        return f"skipped: {e}", {}
    calib = harness.get_calibration(lm.tokenizer, n=16, seq_len=128, seed=0)
    # every student keeps the teacher's first and last blocks (0, 2, 5; DistilBERT's rule): the
    # relation loss maps the teacher's last block onto the student's last, as MiniLM assumes;
    # one row shows the same loss on the every-n-th student (0, 2, 4), which does not keep it
    common = f"layers=3,select=spread,steps={steps},batch={batch},lr=1e-4"  # BERT fine-tuning's lr
    specs = {"student, teacher init, no distillation": "student:layers=3,select=spread",
             "distilled: relation (MiniLM + output-state relation)": f"distill:loss=relation,{common}",
             "distilled: relation, MiniLM terms only": f"distill:loss=relation,relation_states=false,{common}",
             "every-n-th student (0, 2, 4), no distillation": "student:layers=3",
             "every-n-th student (0, 2, 4), distilled: relation":
                 f"distill:loss=relation,{common.replace(',select=spread', '')}",
             "distilled: logits (output-embedding cosine)": f"distill:loss=logits,{common}",
             "distilled: logits+relation": f"distill:loss=logits+relation,{common}",
             "distilled: logits+hidden": f"distill:loss=logits+hidden,{common}"}
    cos, rows = {}, []
    for label, spec in specs.items():
        r = _run(lm, spec, ["fidelity.cosine", "size.bytes", "latency.forward_ms", *TRAIN], calib)
        cos[label] = r["fidelity.cosine"].value
        rows.append([label, f"`{spec}`", _v(r["fidelity.cosine"], ".4f"), f"{r['size.bytes'].value / 1e6:.2f}",
                     _v(r["train.tokens"], ".0f"), _v(r["train.loss_first"]), _v(r["train.loss_last"]),
                     _v(r["train.wall_s"], ".1f"), f"{r['_result'].wall_s:.1f}"])
    md = table(["student (3 of 6 layers)", "spec", "fidelity.cosine to teacher", "size MB", "train tokens",
                "loss first", "loss last (mean of 10)", "train s", "compress s"], rows)
    return md + "\n\n" + relation_reach(lm, calib), cos


def relation_reach(lm, calib) -> str:
    """Which student parameters the relation loss trains: gradient norm per group, one
    batch of 8 training windows, on the untrained 3-layer student; MiniLM's two terms alone
    and with the output-state relation."""
    from harness.calibration import find_blocks
    from harness.models.train_data import for_technique
    from harness.techniques.architecture.student import build_student
    from harness.techniques.distillation.distill import DistillConfig, Objective

    cols = {}
    for states in (False, True):
        cfg = DistillConfig(loss="relation", layers=3, select="spread", relation_states=states)
        st = build_student(lm.model, cfg.student, calib)
        data = for_technique(calib, tokens=8 * 128, seq_len=128, special_tokens=True)
        obj = Objective(lm.model, st.model, st.kept, cfg)
        st.model.train()
        obj(data.input_ids).backward()
        obj.close()
        last = find_blocks(st.model)[1][-1]
        groups = {"embeddings": st.model.embeddings,
                  "student blocks 0-1 (all weights)": find_blocks(st.model)[1][:-1],
                  "last block: query, key, value": last.attention.self,
                  "last block: attention output + FFN (make the scored embedding)": [last.attention.output,
                                                                                     last.intermediate, last.output]}
        for name, mods in groups.items():
            mods = mods if isinstance(mods, (list, torch.nn.ModuleList)) else [mods]
            g = [p.grad for m in mods for p in m.parameters() if p.grad is not None]
            norm = torch.sqrt(sum((x.float() ** 2).sum() for x in g)) if g else torch.tensor(0.0)
            cols.setdefault(name, []).append(f"{float(norm):.3g}")
        lm.model.zero_grad(set_to_none=True)
    rows = [[name, *v] for name, v in cols.items()]
    return ("Where the relation loss reaches (gradient norm of one batch of 8 windows, untrained student):\n\n"
            + table(["student parameters", "MiniLM terms only (relation_states=false)",
                     "with the output-state relation (default)"], rows))


# the harness-tiny students whose hidden states the diagnostic table compares: label -> short name
DIAG = {"student, teacher init, untrained": "untrained", "distilled: logits": "logits",
        "distilled: logits+hidden": "logits+hidden (uniform map)",
        "distilled: logits+hidden, origin map": "logits+hidden (origin map)"}


def hidden_table(lm, models: dict[str, tuple[str, torch.nn.Module]],
                 windows: int = 16) -> tuple[str, dict[str, list[float]]]:
    """Where the hidden-state term pulls, measured on ``windows`` validation windows of 128
    tokens: each 2-layer student's distance to the teacher states the two maps target
    (relative MSE, the loss's own scale-free form), its KL to the teacher and its perplexity."""
    import math

    import torch.nn.functional as F

    from harness.models import data

    x = data.split_ids(lm.tokenizer, "validation")[: windows * 128].view(windows, 128)
    rows, vals = [], {}
    for label, (spec, m) in {"teacher (4 layers)": ("none", lm.model), **models}.items():
        num, den = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        kl = ce = 0.0
        with torch.no_grad():
            for i in range(0, windows, 4):
                xb = x[i:i + 4]
                t = lm.model(input_ids=xb, output_hidden_states=True)
                s = m.eval()(input_ids=xb, output_hidden_states=True)
                pairs = [(s.hidden_states[1], t.hidden_states[2]), (s.hidden_states[1], t.hidden_states[1]),
                         (s.hidden_states[-1], t.hidden_states[-1])]
                for k, (a, b) in enumerate(pairs):
                    num[k] += float((a.float() - b.float()).square().sum())
                    den[k] += float(b.float().square().sum())
                ls, lt = F.log_softmax(s.logits.float(), -1), F.log_softmax(t.logits.float(), -1)
                kl += float(F.kl_div(ls.flatten(0, 1), lt.flatten(0, 1), log_target=True, reduction="sum"))
                ce += float(F.cross_entropy(s.logits[:, :-1].float().flatten(0, 1), xb[:, 1:].flatten(),
                                            reduction="sum"))
        vals[label] = [*(num / den).tolist(), kl / x.numel(), math.exp(ce / (x.shape[0] * (x.shape[1] - 1)))]
        rows.append([label, f"`{spec}`", *(f"{v:.4f}" for v in vals[label][:4]), f"{vals[label][4]:.2f}"])
        print(f"  hidden diag {label}: {rows[-1][2:]}", flush=True)
    return table(["model", "spec", "state after block 1 vs teacher state 2 (uniform target)",
                  "state after block 1 vs teacher state 1 (origin target)", "final state vs teacher final",
                  "KL to teacher per token", "ppl (these windows)"], rows), vals


def _diag_note(vals: dict[str, list[float]]) -> str:
    """What the diagnostic table says about logits+hidden against logits, from its numbers."""
    lo, un = vals["logits"], vals["logits+hidden (uniform map)"]
    nums = (f"KL to the teacher per token {un[3]:.4f} vs {lo[3]:.4f}, final-state relative MSE {un[2]:.3f} vs "
            f"{lo[2]:.3f}, state after block 1 to teacher state 2 {un[0]:.3f} vs {lo[0]:.3f}; perplexity on the "
            f"same windows {un[4]:.2f} vs {lo[4]:.2f}")
    if un[3] < lo[3] and un[4] > lo[4]:
        return (" Measured on 16 validation windows (table below), the feature term does what it is for: the "
                f"`logits+hidden` student is closer to the teacher than the `logits` one ({nums}). Perplexity "
                "scores the data, not the teacher: at 2 of 4 layers the student cannot match both, and the feature "
                "term moves it towards the teacher, at a small cost in perplexity.")
    return f" Measured on 16 validation windows (table below), `logits+hidden` against `logits`: {nums}."


def hidden_diag(steps: int, batch: int) -> tuple[str, dict[str, list[float]]]:
    """``hidden_table`` on its own (``--only hidden-diag``): trains the table's students with
    the same specs and seed, so (training being bit-reproducible) the same weights."""
    import copy

    lm = harness.load_model("harness-tiny")
    calib = harness.get_calibration(lm.tokenizer, n=16, seq_len=128, seed=0)
    specs = causal_specs(steps, batch)
    return hidden_table(lm, {short: (specs[label], harness.compress(copy.deepcopy(lm.model), specs[label],
                                                                   calib).model)
                             for label, short in DIAG.items()})


def gqa(steps: int, batch: int) -> tuple[str, dict[str, float]]:
    lm = harness.load_model("harness-tiny")
    calib = harness.get_calibration(lm.tokenizer, n=16, seq_len=128, seed=0)
    out, rows = {}, []
    for spec in ["none", "gqa:kv_heads=2", f"gqa:kv_heads=2,steps={steps},batch={batch}"]:
        r = _run(lm, spec, ["ppl.window", "memory.kv_cache_mb", "size.bytes", *TRAIN], calib)
        kv = r["memory.kv_cache_mb"]
        per_tok = kv.extra["bytes"] / (kv.extra["batch"] * kv.extra["tokens"])
        out[spec] = r["ppl.window"].value
        out[f"{spec}#kv"] = per_tok
        rows.append([f"`{spec}`", f"{r['_result'].model.config.num_key_value_heads}", _v(r["ppl.window"], ".2f"),
                     f"{per_tok:.0f}", f"{kv.extra['bytes']:,}", f"{r['size.bytes'].value / 1e6:.3f}",
                     _v(r["train.tokens"], ".0f"), f"{r['_result'].wall_s:.1f}" if spec != "none" else "-"])
    md = table(["spec", "KV heads", "ppl.window", "KV-cache bytes per token (measured)", "KV-cache bytes",
                "size MB", "train tokens", "compress s"], rows)
    return md, out


def speed(layers: int, rounds: int) -> tuple[str, float, float]:
    """Decode ms/token of a ``layers``-block model with harness-speed's layer shapes and of its
    half-depth student: this thread's CPU time (``time.thread_time``, one torch thread, so
    the time slices other jobs take on a shared host do not count) of 16 cached steps after
    an untimed 32-token prefill, the two interleaved over ``rounds`` ABBA rounds after one
    warm-up round; speed-up = ratio of the medians."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models.zoo import SPEED_CONFIG

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**{**SPEED_CONFIG, "num_hidden_layers": layers})).eval()
    student = harness.compress(teacher, f"student:layers={layers // 2}").model  # a copy: teacher kept
    ids = torch.randint(0, 32000, (1, 32), generator=torch.Generator().manual_seed(0))

    def cpu_ms(model) -> float:
        return decode_step_ms(model, ids, 16, clocks=(time.thread_time,))[0]

    with torch.no_grad():
        ta, tb = ABTiming.of(interleaved_rounds([lambda: cpu_ms(teacher), lambda: cpu_ms(student)],
                                                rounds=rounds)).medians
    ideal = linear_params(teacher) / linear_params(student)
    md = f"| {layers} -> {layers // 2} | {ta:.1f} | {tb:.1f} | {ta / tb:.2f}x | {ideal:.2f}x |"
    return md, ta / tb, ideal


SUITE_TECHNIQUES = ("student", "distill", "gqa", "drop-layers")


def suite_times(threads: int = 2) -> str:
    """Wall time of ``compress`` for every suite spec of this issue's techniques on
    harness-tiny, with the suites' calibration (quick: 16 windows, full: 32; x 128 tokens)
    and ``threads`` torch threads: the cost each spec adds to ``harness run``."""
    from harness.calibration import get_calibration
    from harness.techniques import TECHNIQUES, compress

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lm = harness.load_model("harness-tiny")
        calib = {q: get_calibration(lm.tokenizer, n=16 if q else 32, seq_len=128, seed=0) for q in (True, False)}
        rows = []
        for name in SUITE_TECHNIQUES:
            for i, spec in enumerate(TECHNIQUES.get(name).suite_specs):
                quick = i == 0  # the quick profile runs each technique's first spec
                model = copy.deepcopy(lm.model)  # compress may change its input in place
                t0 = time.perf_counter()
                res = compress(model, spec, calib[quick], kind=lm.kind)
                wall = time.perf_counter() - t0
                print(f"  {spec:70s} {wall:.1f}s", flush=True)
                rows.append([f"`{spec}`", "quick + full" if quick else "full", f"{wall:.1f}",
                             f"{res.wall_s:.1f}", "yes" if wall < 30 else "**no**"])
    finally:
        torch.set_num_threads(old)
    return "\n".join([
        f"## Suite specs: wall time on {threads} cores", "",
        f"`compress` of harness-tiny with each suite spec, {threads} torch threads, the suites' calibration "
        f"(`--only suite-times` reruns just this table; host: {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}). The target is under 30 s per spec.", "",
        table(["spec", "profile", "wall s", "compress s (recorded)", "< 30 s"], rows)])


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _hidden_note(ppl: dict[str, float], lh: float, d: float) -> str:
    """logits+hidden against logits, by measurement: a second data order, and the hidden-state
    map (the default ``uniform`` against ``origin``, the map of the first runs of this bench)."""
    d1, lh1 = ppl["distilled: logits, data seed 1"], ppl["distilled: logits+hidden, data seed 1"]
    o0, o1 = ppl["distilled: logits+hidden, origin map"], ppl["distilled: logits+hidden, origin map, data seed 1"]
    spread = max(abs(d1 - d), abs(lh1 - lh))
    uni = (lh - d, lh1 - d1)
    ori = (o0 - d, o1 - d1)
    if max(uni) <= 0 < min(ori):
        verdict = ("On both orders the map accounts for the sign: held to the next kept block's input, the term "
                   "helps; held to the block's own output, it costs.")
    elif max(uni) <= 0 and max(ori) <= 0:
        verdict = "On both orders the term helps with either map."
    elif min(uni) > 0 and min(ori) > 0:
        verdict = ("On both orders the term costs with either map: on this model at this budget, with its weight 1 "
                   "(unswept), the feature term does not pay.")
    else:
        verdict = (f"The signs differ between the orders, so at this budget the differences are within the "
                   f"{spread:.2f} ppl the data order alone moves a spec.")
    return (f" ({lh - d:+.2f}). On a second data order (seed 1): {lh1:.2f} vs {d1:.2f} ({lh1 - d1:+.2f}) "
            f"{_met(lh1 <= d1)}; the same spec moves by up to {spread:.2f} ppl between the two orders. "
            "Hidden-state map: the default `hidden_map=uniform` holds the student's block 0 (teacher block 0) to "
            "the state teacher block 2 read as its input, so the block is asked to do the work of the dropped "
            "teacher block 1 as well (TinyBERT's uniform map: student layer m onto teacher layer m N / M); "
            "`hidden_map=origin` holds it to teacher block 0's own output, which the teacher-initialised block "
            f"meets before training, so that pair only pins it in place: {o0:.2f} (seed 0) and {o1:.2f} (seed 1), "
            f"{ori[0]:+.2f} and {ori[1]:+.2f} against `logits` alone. " + verdict)


def render(a, ppl, cos, g, sp, causal_md, enc_md, gqa_md, speed_md, total_s: float, host: str,
           diag: tuple[str, dict[str, list[float]]] | None = None) -> str:
    """docs/results/distillation.md: the targets with their measured verdicts, then the tables."""
    d, ce_t, ce_r = ppl["distilled: logits"], ppl["teacher init, CE only (no teacher)"], \
        ppl["random init, CE only (no teacher)"]
    lh = ppl["distilled: logits+hidden"]
    tokens = a.steps * a.batch * 128
    lines = [f"- 2-layer student, `loss=logits` vs the same student trained without the teacher "
             f"(teacher init, CE only): ppl {d:.2f} vs {ce_t:.2f} (margin {ce_t - d:+.2f}, "
             f"{100 * (ce_t / d - 1):+.1f}%) {_met(d < ce_t)}; vs random init on the same tokens: {ce_r:.2f} "
             f"(margin {ce_r - d:+.2f}) {_met(d < ce_r)}.",
             f"- `logits+hidden` <= `logits`: {lh:.2f} vs {d:.2f} {_met(lh <= d)}" + _hidden_note(ppl, lh, d)
             + (_diag_note(diag[1]) if diag else "")]
    if cos:
        base, rel = cos["student, teacher init, no distillation"], cos["distilled: relation (MiniLM + output-state relation)"]
        mini, lr, lo = (cos["distilled: relation, MiniLM terms only"], cos["distilled: logits+relation"],
                        cos["distilled: logits (output-embedding cosine)"])
        eb, er = (cos["every-n-th student (0, 2, 4), no distillation"],
                  cos["every-n-th student (0, 2, 4), distilled: relation"])
        lines.append(f"- minilm-l6 -> 3 layers (blocks 0, 2, 5), relation loss (MiniLM's attention-distribution and "
                     f"value-relation KL on the last block, plus the output states' token relation): embedding "
                     f"cosine {rel:.4f} vs {base:.4f} for the same student without distillation "
                     f"(margin {rel - base:+.4f}) {_met(rel > base)}. MiniLM's two terms alone: {mini:.4f}. "
                     f"Both terms map the teacher's last block onto the student's last, so the student must keep "
                     f"it: on the every-n-th student (blocks 0, 2, 4), whose last block is teacher block 4, the "
                     f"same loss gives {er:.4f} against {eb:.4f} untrained ({er - eb:+.4f}): it asks block 4 to "
                     f"attend like block 5, and the lower blocks move to make it. The output-state term exists "
                     f"because MiniLM's relations read the last block's Q, K, V only, so its attention output and "
                     f"FFN (which write the embedding) get no gradient from them (table below). With the "
                     f"response loss: logits+relation {lr:.4f}, logits alone {lo:.4f}.")
    else:
        lines.append("- minilm-l6: not measured (the optional `encoder` extra is missing).")
    dense, up = g["none"], g[f"gqa:kv_heads=2,steps={a.gqa_steps},batch={a.batch}"]
    kv_ratio = g["none#kv"] / g["gqa:kv_heads=2#kv"]
    lines.append(f"- `gqa:kv_heads=2` (4 -> 2) with {a.gqa_steps} uptraining steps: ppl {up:.2f} vs dense {dense:.2f} "
                 f"({100 * (up / dense - 1):+.1f}%; target within 5%) {_met(up <= 1.05 * dense)}; without "
                 f"uptraining {g['gqa:kv_heads=2']:.2f}. KV-cache bytes per token {g['none#kv']:.0f} -> "
                 f"{g['gqa:kv_heads=2#kv']:.0f} ({kv_ratio:.2f}x smaller) {_met(abs(kv_ratio - 2) < 1e-6)}.")
    (_, s2, i2), (_, s8, i8) = sp
    lines.append(f"- Half-depth student decode speed-up >= 1.7x: harness-speed as registered (2 -> 1 layers) "
                 f"{s2:.2f}x (ideal from linear weights {i2:.2f}x: the 32000-word head and embedding outweigh one "
                 f"block, so 1.7x is out of reach at this depth) {_met(s2 >= 1.7)}; the same shapes at 8 -> 4 "
                 f"layers {s8:.2f}x (ideal {i8:.2f}x) {_met(s8 >= 1.7)}.")
    return "\n".join([
        "# Distillation and efficient architecture", "",
        "Written by `.venv/bin/python benchmarks/bench_distill.py`; every number below was measured in one run through "
        "`harness.evaluation.compress_and_measure` (the path `harness eval` and the suites use). "
        f"Host: {host}; total run {total_s / 60:.1f} min. The wall times (train s, compress s) are on "
        "2 CPU cores shared with other jobs running at the same time, so they are upper bounds.", "",
        f"Data budget: every harness-tiny run trains {a.steps} steps x {a.batch} windows x 128 tokens = "
        f"{tokens:,} tokens of the bundled train split (206,720 tokens in 128-token windows, so "
        f"{tokens / 206720:.2f} epochs), in the seeded order of `harness.models.train_data` (seed 0), AdamW "
        "lr 1e-3 with 10% warm-up and linear decay. Validation perplexity: `ppl.window` (validation split, "
        "window 128). minilm-l6 runs train "
        f"{a.enc_steps} steps x {a.batch} x 128 tokens of the same split (its WordPiece tokens), lr 1e-4; GQA uptraining "
        f"{a.gqa_steps} steps x {a.batch} x 128 tokens (self-distillation to the dense model, lr 3e-4). "
        "One seed each (the logits / logits+hidden rows also on a second data order, seed 1): the margins "
        "are single-run figures, not averages. Dropout is seeded too (the spec's seed, in a forked RNG "
        "state), so a rerun on the same software reproduces every loss and perplexity; only the wall "
        "times move.", "",
        "## Targets", "", *lines, "",
        "## harness-tiny: 2-layer students (blocks 0 and 2 of 4)", "", causal_md, "",
        "`alpha=0` with `loss=logits` is the hard-label loss alone: the teacher is never run.", "",
        "Where the hidden-state term pulls (the seed-0 students above, 16 validation windows x 128 tokens): "
        "relative MSE (`|s - t|^2 / |t|^2`, the loss's scale-free form) between the state after the "
        "student's first block and the teacher state each map targets (state 2 for `uniform`, state 1 for "
        "`origin`), and between the final states; KL to the teacher and perplexity on the same windows.", "",
        diag[0] if diag else "not measured in this run", "",
        "## minilm-l6: 3-layer students (blocks 0, 2, 5 of 6, `select=spread`)", "",
        "Scored by `fidelity.cosine`: mean-pooled, L2-normalized sentence embeddings of 64 validation "
        "paragraphs, student against teacher (the untrained students are the controls: an encoder has no hard "
        "labels to train on without the teacher; every distilled row starts from the untrained student of its "
        "selection, blocks 0, 2, 5 unless the label says 0, 2, 4). Training "
        "windows are framed `[CLS] ... [SEP]` like the scored sentences (126 text tokens each); no padding.", "",
        enc_md, "",
        "## GQA conversion on harness-tiny (8 query heads, 4 -> 2 KV heads)", "", gqa_md, "",
        "## Decode speed of half-depth students (harness-speed shapes: TinyLlama-1.1B layers, seeded random "
        f"weights; thread CPU ms per token, 16 cached steps after a 32-token prompt, median of {a.rounds})", "",
        speed_md, "",
        "Ideal = linear weights multiplied per token (blocks + LM head), teacher / student.", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--enc-steps", type=int, default=100)
    ap.add_argument("--gqa-steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "distillation.md")
    ap.add_argument("--only", choices=["hidden-diag", "suite-times"], default=None,
                    help="one section only: hidden-diag prints its table (writes nothing); suite-times "
                         "replaces that section of --out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.only == "hidden-diag":
        md, vals = hidden_diag(a.steps, a.batch)
        print(md + "\n\n" + _diag_note(vals))
        return
    if a.only == "suite-times":
        section = suite_times()
        write_doc(a.out, section, section="suite-times")
        print(section)
        return
    t0 = time.time()
    print("harness-tiny students:", flush=True)
    causal_md, ppl, diag = causal(a.steps, a.batch)
    print("minilm-l6 students:", flush=True)
    enc_md, cos = encoder(a.enc_steps, a.batch)
    print("gqa:", flush=True)
    gqa_md, g = gqa(a.gqa_steps, a.batch)
    print("speed:", flush=True)
    sp = [speed(n, a.rounds) for n in (2, 8)]
    speed_md = "\n".join(["| layers | teacher ms/token | student ms/token | speed-up | ideal (linear weights) |",
                          "|---|---|---|---|---|", *[s[0] for s in sp]])
    text = render(a, ppl, cos, g, sp, causal_md, enc_md, gqa_md, speed_md, time.time() - t0,
                  f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 torch thread",
                  diag)
    print("suite specs:", flush=True)
    text = splice(text, "suite-times", suite_times())
    write_doc(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
