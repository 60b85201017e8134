"""Section ``chain`` of docs/results/pipelines.md: a named pipeline on harness-tiny that is >= 8x
smaller than the fp32 model (serialized bytes: every file of the saved checkpoint) at
<= +10% validation perplexity, what each stage contributes, and the best single technique
at the same size.

    .venv/bin/python benchmarks/bench_pipelines.py --section chain [--quick]
    .venv/bin/python benchmarks/pipelines_chain.py [--quick]      # prints the section

Why this pipeline (by method, not tuned to the target): half of harness-tiny's bytes are
the token embedding and the untied output head, which linear-layer quantizers keep in
fp32, so no single technique can shrink the file 8x. The pipeline removes a quarter of the
FFN neurons (structured: the shapes shrink), recovers the loss by distillation from the
uncompressed model (Minitron's prune-then-distill: the teacher's logits only, ``alpha=1``,
at a fine-tuning learning rate, ``lr=1e-4``, since the student starts trained; the full run
also measures the other recovery settings), quantizes every block linear and the
head with GPTQ (4-bit, groups of 64, calibrated on the pruned and distilled model), and
stores the embedding table as 4-bit codes. Perplexity: validation split, fixed
non-overlapping 128-token windows; the change against fp32 is a paired bootstrap over the
same windows (``harness.stats.paired_ppl_change``).
"""
from __future__ import annotations

import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import table

import harness
from harness.measure.accuracy import perplexity_window_samples
from harness.measure.size import serialized_bytes, weight_storage
from harness.stats import paired_ppl_change
from harness.techniques.pipeline import observe_stages, split_stages

SEED = 0


RECOVERY = "loss=logits,alpha=1.0,lr=1e-4"  # match the teacher's logits only, at a fine-tuning rate


def pipeline(steps: int) -> str:
    """The named pipeline of this section (``steps``: distillation steps)."""
    return (f"prune-neurons:fraction=0.25 + distill:{RECOVERY},steps={steps},batch=8,seed={SEED} + "
            f"gptq:bits=4,group=64,head=true + quant-embed:bits=4,group=64")


# Single techniques at their smallest useful settings, for the same-size comparison.
SINGLES = ("gptq:bits=4,group=64,head=true", "gptq:bits=2,group=64,head=true", "quant-embed:bits=2,group=64",
           "prune-neurons:fraction=0.75", "distill:loss=logits,layers=1,width=0.25,steps={steps},batch=8")
# The recovery stage's settings, each after the same pruning (full run only).
RECOVERY_ABLATION = ("distill:steps={steps},batch=8", "distill:lr=1e-4,steps={steps},batch=8",
                     f"distill:{RECOVERY},steps={{steps}},batch=8", "recover:steps={steps},batch=8,lr=1e-4")


def checkpoint_bytes(model: torch.nn.Module, spec: str) -> tuple[int, Path]:
    """Bytes of every file ``harness.save_compressed`` writes for ``model`` (no tokenizer),
    and the directory (in a temporary folder the caller removes)."""
    d = Path(tempfile.mkdtemp(prefix="harness-chain-")) / "ckpt"
    harness.save_compressed(model, d, technique=spec)
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file()), d


class Scorer:
    """Validation perplexity (fixed windows) of any model, paired with the fp32 model's."""

    def __init__(self, lm, max_tokens: int | None) -> None:
        self.lm, self.max_tokens = lm, max_tokens
        self.ref_ppl, self.ref_nll = self.ppl(lm.model)

    def ppl(self, model) -> tuple[float, list[float]]:
        with torch.no_grad():
            value, samples = perplexity_window_samples(model, self.lm.tokenizer, "validation", window=128,
                                                       max_tokens=self.max_tokens)
        return value, samples["window_nll"]

    def change(self, value: float, nll: list[float]) -> str:
        return paired_ppl_change(nll, self.ref_nll, value, self.ref_ppl).describe(True)


def _size(model) -> dict[str, float]:
    bits, logical = weight_storage(model)
    return {"bytes": serialized_bytes(model), "bits": bits / logical if logical else float("nan")}


def run(quick: bool) -> str:
    t_start = time.perf_counter()
    torch.manual_seed(SEED)
    steps = 30 if quick else 200
    max_tokens = 16384 if quick else None
    lm = harness.load_model("harness-tiny")
    calib = harness.get_calibration(lm.tokenizer, n=16 if quick else 32, seq_len=128, seed=SEED)
    score = Scorer(lm, max_tokens)
    ref_files, ref_dir = checkpoint_bytes(lm.model, "none")
    ref = _size(lm.model)
    spec = pipeline(steps)
    per_stage: list[dict] = []
    kept: dict[str, torch.nn.Module] = {}

    def observe(i: int, model) -> dict:
        if i == 2:  # the pruned and distilled model: the other quantization settings start here too
            kept["distilled"] = copy.deepcopy(model)
        value, nll = score.ppl(model)
        per_stage.append({"ppl": value, "nll": nll, **_size(model)})
        print(f"  after stage {i}: ppl {value:.3f}, {per_stage[-1]['bytes'] / 1e6:.3f} MB", flush=True)
        return {"ppl": value}

    with observe_stages(observe):
        res = harness.compress(copy.deepcopy(lm.model), spec, calibration=calib)
    files, d = checkpoint_bytes(res.model, res.spec)
    reloaded = harness.load_compressed(d)
    x = calib.input_ids[:2]
    with torch.no_grad():
        same = torch.equal(reloaded(input_ids=x).logits, res.model(input_ids=x).logits)
    final_ppl, final_nll = per_stage[-1]["ppl"], per_stage[-1]["nll"]
    ratio = ref_files / files
    gap = final_ppl / score.ref_ppl - 1

    rows = [["0", "fp32 reference", "-", f"{ref['bytes'] / 1e6:.3f}", "1.00x", f"{ref['bits']:.2f}",
             f"{score.ref_ppl:.3f}", "-", "-"]]
    for st, m, written in zip(res.extra["stages"], per_stage, split_stages(spec)):
        rows.append([str(st["stage"]), f"`{written}`", st["storage"], f"{m['bytes'] / 1e6:.3f}",
                     f"{ref['bytes'] / m['bytes']:.2f}x", f"{m['bits']:.2f}", f"{m['ppl']:.3f}",
                     f"{100 * (m['ppl'] / score.ref_ppl - 1):+.2f}%", f"{st['wall_s']:.1f}"])
    stage_md = table(["stage", "spec", "storage", "model.safetensors MB after", "smaller than fp32",
                      "bits/param (block linears + packed head/embedding)", "ppl.window", "vs fp32",
                      "stage wall s"], rows)

    singles, closest = [], None
    for s in SINGLES:
        s = s.format(steps=steps)
        r = harness.compress(copy.deepcopy(lm.model), s, calibration=calib)
        f, dd = checkpoint_bytes(r.model, r.spec)
        v, nll = score.ppl(r.model)
        singles.append([f"`{s}`", f"{f / 1e6:.3f}", f"{ref_files / f:.2f}x", f"{v:.3f}",
                        f"{100 * (v / score.ref_ppl - 1):+.2f}%", f"{r.wall_s:.1f}"])
        if closest is None or abs(f - files) < abs(closest[1] - files):
            closest = (s, f, v)
        _rm(dd)
        print(f"  single {s}: {f / 1e6:.3f} MB, ppl {v:.3f}", flush=True)
    singles_md = table(["single technique", "checkpoint MB", "smaller than fp32", "ppl.window", "vs fp32",
                        "compress s"], singles)
    ablation_md = "" if quick else recovery_ablation(lm, calib, score, per_stage[0]["ppl"])
    variants_md = variants(kept["distilled"], calib, score, ref_files, split_stages(spec)[:2])
    _rm(d)
    _rm(ref_dir)
    ok_size, ok_ppl = ratio >= 8, gap <= 0.10
    none_reach = all(float(r[1]) * 1e6 > files * 1.05 for r in singles)
    wall = time.perf_counter() - t_start
    return "\n\n".join([
        f"Pipeline (named `prune-distill-gptq4-embed4`):\n\n`{spec}`\n\n(canonical spec in the records, defaults "
        f"left out: `{res.spec}`)",
        table(["target", "measured", "met"], [
            [">= 8x smaller serialized bytes than fp32 (every file of the saved checkpoint)",
             f"{ref_files:,} / {files:,} bytes = **{ratio:.2f}x**", "yes" if ok_size else "**no**"],
            ["<= +10% validation perplexity", f"{score.ref_ppl:.3f} -> {final_ppl:.3f} (**{100 * gap:+.2f}%**)",
             "yes" if ok_ppl else "**no**"],
            ["saved checkpoint reloads with identical logits", "yes" if same else "no", "yes" if same else "**no**"],
        ]),
        f"Paired change of the final model against fp32: {score.change(final_ppl, final_nll)}.",
        "Each stage's contribution (measured after the stage, on the model the next stage receives; "
        "sizes are the model.safetensors bytes, `size.bytes`):",
        stage_md,
        variants_md,
        "Single techniques (each alone on the fp32 model; checkpoint MB counts every saved file like the "
        "pipeline's):",
        singles_md,
        *([ablation_md] if ablation_md else []),
        (f"No single technique reaches the pipeline's {files / 1e6:.2f} MB: the linear quantizers leave the "
         f"embedding table in fp32 and `quant-embed` leaves every block linear in fp32. The closest in size is "
         f"`{closest[0]}` ({closest[1] / 1e6:.2f} MB, ppl {closest[2]:.3f})." if none_reach else
         f"Closest single technique in size: `{closest[0]}` ({closest[1] / 1e6:.2f} MB, ppl {closest[2]:.3f})."),
        (f"Settings: seed {SEED} (calibration windows, distillation data order), calibration {calib.n} windows x "
         f"128 tokens of the train split, distillation {steps} steps x 8 windows x 128 tokens, perplexity on "
         f"{'the first 16384 tokens of ' if max_tokens else ''}the validation split. "
         f"{'Quick run (`--quick`). ' if quick else ''}Measured {time.strftime('%Y-%m-%d')} on "
         f"{platform.machine()} ({torch.get_num_threads()} torch threads, a shared 2-core machine); "
         f"section wall time {wall:.0f} s."),
    ])


# Other quantization stages on the same pruned and distilled model (the size/accuracy trade).
VARIANTS = ("gptq:bits=3,group=64,head=true + quant-embed:bits=4,group=64",
            "gptq:bits=3,group=64,head=true + quant-embed:bits=3,group=64",
            "gptq:bits=2,group=64,head=true + quant-embed:bits=4,group=64")


def variants(distilled, calib, score: Scorer, ref_files: int, first: list[str]) -> str:
    rows = []
    for v in VARIANTS:
        r = harness.compress(copy.deepcopy(distilled), v, calibration=calib)
        f, d = checkpoint_bytes(r.model, r.spec)
        p, _ = score.ppl(r.model)
        rows.append([f"`{' + '.join(first)} + {v}`", f"{f / 1e6:.3f}", f"{ref_files / f:.2f}x", f"{p:.3f}",
                     f"{100 * (p / score.ref_ppl - 1):+.2f}%"])
        _rm(d)
        print(f"  variant {v}: {f / 1e6:.3f} MB, ppl {p:.3f}", flush=True)
    return ("The same first two stages with other quantization stages (checkpoint MB: every saved file):\n\n"
            + table(["pipeline", "checkpoint MB", "smaller than fp32", "ppl.window", "vs fp32"], rows))


def recovery_ablation(lm, calib, score: Scorer, pruned_ppl: float, steps: int = 60) -> str:
    """Why the recovery stage is configured as it is: the same pruning, then each setting."""
    rows = [["`prune-neurons:fraction=0.25` (no recovery)", f"{pruned_ppl:.3f}",
             f"{100 * (pruned_ppl / score.ref_ppl - 1):+.2f}%", "-"]]
    for s in RECOVERY_ABLATION:
        stage = s.format(steps=steps)
        r = harness.compress(copy.deepcopy(lm.model), f"prune-neurons:fraction=0.25 + {stage}", calibration=calib)
        v, _ = score.ppl(r.model)
        rows.append([f"`prune-neurons:fraction=0.25 + {stage}`", f"{v:.3f}", f"{100 * (v / score.ref_ppl - 1):+.2f}%",
                     f"{r.figures.get('train.wall_s', float('nan')):.0f}"])
        print(f"  recovery {stage}: ppl {v:.3f}", flush=True)
    return (f"Recovery settings after the same pruning ({steps} steps each; `distill` learns from the "
            f"uncompressed model, `recover` fine-tunes on the train split's next tokens):\n\n"
            + table(["stages", "ppl.window", "vs fp32", "train s"], rows))


def _rm(ckpt: Path) -> None:
    import shutil

    shutil.rmtree(ckpt.parent, ignore_errors=True)


if __name__ == "__main__":
    print(run("--quick" in sys.argv[1:]))
