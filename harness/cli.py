"""``harness`` command line. Every subcommand prints one-line errors and exits 2 on bad input.

Subcommands register themselves in ``COMMANDS`` through ``command(...)``; modules that
add commands (runs, reports, baselines, leaderboard, kernels) are imported lazily so
``harness --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable

EXAMPLES = textwrap.dedent("""\
    examples:
      harness models list                         named models
      harness eval harness-tiny --metrics ppl.window,size.bytes
      harness eval harness-tiny --technique rtn:bits=4,group=128 --json
      harness techniques                          every technique and its options
      harness env --json                          device fingerprint
    """)

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {}
# modules that call command(...) to add subcommands
EXTENSIONS = ["harness.cli_run", "harness.cli_baseline", "harness.cli_reports", "harness.cli_history",
              "harness.cli_search"]


def command(name: str, help: str):
    """Decorator: ``@command("eval", "...")`` on a setup function that adds the
    subcommand's arguments and its handler (``p.set_defaults(handler=...)``)."""
    def deco(setup: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (setup, help)
        return setup
    return deco


class UsageError(ValueError):
    """Bad input on the command line (exit code 2)."""


def _print_records(records, as_json: bool) -> None:
    if as_json:
        for r in records:
            print(json.dumps(r.to_dict(), sort_keys=True, default=str))
        return
    print(f"{'metric':32} {'value':>14} {'unit':8} {'n':>4}  note")
    for r in records:
        val = "N/A" if r.value is None else f"{r.value:.6g}"
        print(f"{r.metric:32} {val:>14} {r.unit:8} {r.n:>4}  {r.reason}")


@command("eval", "evaluate one model, optionally after one technique")
def _eval_cmd(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name (harness models list) or local HF directory")
    p.add_argument("--technique", "-t", default="none", help="technique spec, e.g. rtn:bits=4,group=128")
    p.add_argument("--metrics", "-m", default=None, help="comma-separated metric names (default: all for the kind)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--calibration", type=int, default=32, help="calibration windows (techniques that need them)")
    p.add_argument("--save", default=None,
                   help="save the compressed model to this new or empty directory (or a harness checkpoint "
                        "with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="--save may replace an existing harness checkpoint")
    p.add_argument("--export", default=None, metavar="FMT:PATH",
                   help="also write the compressed model as gguf:FILE.gguf (llama.cpp) or compressed-tensors:DIR "
                        "(vLLM); options as gguf,asym=q8_0:FILE (docs/guide/formats.md)")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--threads", default=None, metavar="N",
                   help="torch CPU threads (an integer >= 1, or 'auto': usable cores); default: torch's own. "
                        "1 is steadiest on a shared runner")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="score at most N tokens in the perplexity/fidelity protocols (like lm-eval's --limit)")
    p.add_argument("--split", default="validation", choices=["validation", "test", "train"],
                   help="bundled corpus split the perplexity protocols score (default: validation)")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="score this UTF-8 text instead of a split (its sha256 goes into the records)")
    p.add_argument("--calibration-text", default=None, metavar="FILE",
                   help="draw calibration windows from this UTF-8 text instead of the train split")
    p.add_argument("--lm-eval-tasks", default=None, metavar="NAME,...",
                   help="lm-eval tasks to score offline (acc, acc_norm), e.g. harness_cloze (bundled)")

    def run(a: argparse.Namespace) -> int:
        import torch

        import harness
        from harness.evaluation import EvalContext, compress_and_measure, parse_metrics
        from harness.measure.environment import device_class, fingerprint_id
        from harness.options import EvalOptions, auto_threads, parse_threads

        if a.threads is not None:  # before any work: a bad value fails in a second
            threads = parse_threads(a.threads, "--threads")
            torch.set_num_threads(threads or auto_threads())
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {a.device}: CUDA requested but no GPU is available here")
        if a.save:  # before any work: never measure for minutes, then refuse to save
            from harness.checkpoint import check_save_target

            check_save_target(a.save, overwrite=a.overwrite)
        elif a.overwrite:
            raise UsageError("--overwrite only applies together with --save DIR")
        if a.export:  # a bad target fails before the model loads
            from harness.formats.export import parse_target

            export_to = parse_target(a.export)
        if a.lm_eval_tasks is not None and not EvalOptions.tasks_of(a.lm_eval_tasks):
            raise UsageError("--lm-eval-tasks is empty; give e.g. --lm-eval-tasks harness_cloze")
        # bad budget, split, files or tasks: one line, before the model loads (the same checks as --harness-*)
        opts = EvalOptions(max_tokens=a.max_tokens, split=a.split, text=a.text, calibration_text=a.calibration_text,
                           lm_eval_tasks=EvalOptions.tasks_of(a.lm_eval_tasks))
        ctx = EvalContext(eval=opts.eval_config())
        tech = harness.make(a.technique)  # parsed once, here: a bad spec fails before the model loads
        lm = harness.load_model(a.model, device=a.device, trust_remote_code=a.trust_remote_code)
        metrics = parse_metrics(a.metrics, lm.kind) + opts.task_metrics
        res, records = compress_and_measure(
            lm, tech, parse_metrics(metrics, lm.kind), ctx=ctx, device=a.device, deltas=False,
            calibration=lambda: harness.get_calibration(lm.tokenizer, n=a.calibration,
                                                        text_file=a.calibration_text))
        extra = dict(technique=res.technique, spec=res.spec, config=res.config_dict, storage=res.storage,
                     device=fingerprint_id(a.device), device_class=device_class(a.device))
        records = [r.with_context(**extra) for r in records]
        if a.save:
            harness.save_compressed(res.model, a.save, tokenizer=lm.tokenizer, technique=res.spec,
                                    overwrite=a.overwrite)
        if a.export:
            fmt, path, options = export_to
            out = harness.export(res.model, fmt, path, tokenizer=lm.tokenizer,
                                 **{**_export_defaults(lm, fmt), **options})
            print(f"harness: exported {fmt} to {out['path']} ({out['bytes']} bytes)"
                  + "".join(f"; {n}" for n in out["notes"]), file=sys.stderr)
        _print_records(records, a.json)
        return 0

    p.set_defaults(handler=run)


def _export_defaults(lm, fmt: str) -> dict:
    """What an imported GGUF model hands back to its GGUF export (llama.cpp's pre-tokenizer name)."""
    pre = lm.info.get("gguf_tokenizer_pre")
    return {"tokenizer_pre": pre} if pre and fmt == "gguf" else {}


@command("env", "print the device fingerprint and device class")
def _env_cmd(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from harness.measure.environment import device_class, fingerprint, fingerprint_id

        fp = dict(fingerprint(a.device), device_class=device_class(a.device), fingerprint_id=fingerprint_id(a.device))
        if a.json:
            print(json.dumps(fp, indent=2, default=str))
        else:
            for k, v in fp.items():
                print(f"{k:24} {v}")
        return 0

    p.set_defaults(handler=run)


@command("models", "list, describe or build models")
def _models_cmd(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "info", "build"])
    p.add_argument("name", nargs="?")

    def run(a: argparse.Namespace) -> int:
        from harness.models.zoo import MODELS, load_model

        if a.action == "list":
            for name, spec in MODELS.items():
                extra = f" [extra: {spec.extra}]" if spec.extra else ""
                print(f"{name:16} {spec.kind:10} {spec.description}{extra}")
            return 0
        if not a.name:
            raise UsageError(f"'harness models {a.action}' needs a model name ({', '.join(MODELS)})")
        if a.action == "build" and a.name == "smollm2-135m":  # GGUF -> cached safetensors directory
            from harness.models.real import build

            path, wall = build()
            print(f"{a.name}: " + (f"built in {wall:.1f} s" if wall is not None else "already built") + f": {path}")
            return 0
        if a.action == "build":
            if a.name != "harness-tiny":
                raise UsageError(f"only 'harness-tiny' and 'smollm2-135m' have a build recipe (got {a.name!r})")
            from harness.measure.accuracy import perplexity_window
            from harness.models.build import build_tiny

            build_tiny(evaluate_ppl=lambda model, tok, window: perplexity_window(model, tok, "validation",
                                                                                 window=window))
            return 0
        lm = load_model(a.name)
        n = sum(p.numel() for p in lm.model.parameters())
        info = {"name": lm.name, "kind": lm.kind, "source": lm.source, "parameters": n,
                "architecture": type(lm.model).__name__, "accuracy": lm.accuracy_na or "measured",
                **{k: v for k, v in lm.info.items() if k != "recipe"}}
        print(json.dumps(info, indent=2, default=str))
        return 0

    p.set_defaults(handler=run)


@command("techniques", "list registered techniques with their options and defaults")
def _techniques_cmd(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        import dataclasses

        from harness.techniques import IMPORT_ERRORS, TECHNIQUES

        rows = []
        for name, cls in TECHNIQUES.items():
            opts = {f.name: (None if f.default is dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(cls.config_cls) if f.init}
            rows.append({"name": name, "family": cls.family, "storage": cls.storage,
                         "calibration": cls.needs_calibration, "cuda_only": cls.requires_cuda,
                         "options": opts, "description": cls.description})
        if a.json:
            print(json.dumps(rows, indent=2, default=str))
        else:
            for r in rows:
                opts = ",".join(f"{k}={v}" for k, v in r["options"].items())
                flags = "".join([" [calib]" if r["calibration"] else "", " [cuda]" if r["cuda_only"] else ""])
                print(f"{r['name']:16} {r['family']:13} {r['storage']:11} {opts}{flags}")
        for mod, err in IMPORT_ERRORS.items():
            print(f"warning: {mod} not loaded: {err}", file=sys.stderr)
        return 0

    p.set_defaults(handler=run)


@command("kernels", "Triton kernel tools: harness kernels bench --help")
def _kernels_cmd(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kernels_command", metavar="ACTION", required=True)
    from harness.measure.kernel_bench import configure_parser

    configure_parser(sub.add_parser("bench", help="kernel micro-benchmark (CUDA GPU; --static SM needs none)"))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every subcommand's parser; given ``argv``, only the command it names is configured
    in full (a setup may import torch: ``harness merge`` need not pay for ``kernels``)."""
    import importlib

    for mod in EXTENSIONS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    parser = argparse.ArgumentParser(prog="harness", description="Benchmark and evaluate compressed language models.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((x for x in argv if not x.startswith("-")), None) if argv is not None else None
    for name, (configure, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if argv is None or name == wanted:
            configure(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into bad input (exit 2) and bugs (exit 1)
        if not is_bad_input(e):
            import traceback

            traceback.print_exc()
            print(f"harness {args.command}: internal error ({type(e).__name__}); this is a bug in the harness, "
                  f"please report it with the traceback above and the command line", file=sys.stderr)
            return 1
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"harness {args.command}: error: {msg}", file=sys.stderr)
        return 2


# Bad input, not bugs: a value the user gave (ValueError and its kinds: SpecError, BaselineError,
# ModelLoadError, CheckpointError, UsageError, ...), a path that is not there or not readable, a
# technique this device cannot run. Anything else raised from inside the harness is a bug.
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                              PermissionError)


def is_bad_input(e: BaseException) -> bool:
    """Whether ``e`` is the user's mistake (one line, exit 2) rather than a bug (traceback, exit 1)."""
    if isinstance(e, BAD_INPUT):
        return True
    from harness.techniques.base import DeviceUnsupportedError

    return isinstance(e, DeviceUnsupportedError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
