"""Search spaces (YAML): which spec strings a search may try.

```yaml
techniques:                 # one family per technique: each option a list of choices,
  gptq: {bits: [2, 3, 4], group: [32, 64, 128]}        # a range {low, high[, step, log]}
  prune-neurons: {fraction: {low: 0.1, high: 0.5, step: 0.05}}
  distill: {loss: logits, layers: [2, 3], steps: 300}  # or one fixed value
  tie-embeddings: {}
pipelines:                  # templates of stage specs joined by ' + '; {name} is an option
  prune-gptq:
    template: "prune-neurons:fraction={fraction} + gptq:bits={bits},group={group}"
    options: {fraction: [0.125, 0.25], bits: [3, 4], group: [64, 128]}
seeds: ["gptq:bits=4,group=128"]   # optional: evaluated first, as given
```

A spec is only ever handed to ``harness.techniques.spec.make``: the search does not know
how techniques or pipelines are built. Loading validates every entry at its corner values
through ``make``, so a typo fails before any model is loaded. Pipelines need the
``pipeline`` technique; where it is not registered they are left out with a note.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SPACE = Path(__file__).resolve().parent / "default_space.yaml"
_SCALAR = (bool, int, float, str)


@dataclass(frozen=True)
class Param:
    """One option: ``choices``, or a numeric range ``low..high`` (``step``, ``log``)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if self.choices is not None:
            if not self.choices or not all(isinstance(c, _SCALAR) for c in self.choices):
                raise ValueError(f"option {self.name!r}: choices must be a non-empty list of numbers or strings")
            return
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.low, self.high)):
            raise ValueError(f"option {self.name!r}: a range needs numeric low and high")
        if not self.low < self.high:
            raise ValueError(f"option {self.name!r}: low={self.low} must be below high={self.high}")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError(f"option {self.name!r}: step must be > 0 and cannot go with log")
        if self.log and self.low <= 0:
            raise ValueError(f"option {self.name!r}: a log range needs low > 0")

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def corners(self) -> list[Any]:
        return [self.choices[0], self.choices[-1]] if self.choices is not None else [self.low, self.high]

    def suggest(self, trial: Any, key: str) -> Any:
        """The trial's value (optuna's ``suggest_*``; ``key`` is the parameter's name there)."""
        if self.choices is not None:
            return trial.suggest_categorical(key, list(self.choices))
        if self.integer:
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), step=self.step, log=self.log)


def _param(name: str, raw: Any, where: str) -> Param | Any:
    """A Param for a list or a range mapping; a scalar stays a fixed value."""
    try:
        if isinstance(raw, list):
            return Param(name, tuple(raw))
        if isinstance(raw, dict):
            extra = set(raw) - {"low", "high", "step", "log"}
            if extra:
                raise ValueError(f"option {name!r}: unknown range key {sorted(extra)[0]!r} "
                                 f"(allowed: low, high, step, log)")
            return Param(name, None, raw.get("low"), raw.get("high"), raw.get("step"), bool(raw.get("log", False)))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if isinstance(raw, _SCALAR):
        return raw
    raise ValueError(f"{where}: option {name!r} must be a value, a list of choices or a range mapping")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


@dataclass(frozen=True)
class Entry:
    """A technique family or a pipeline: a spec template and the options that fill it."""

    name: str
    template: str
    params: tuple[Param, ...]
    pipeline: bool = False

    def spec(self, values: dict[str, Any]) -> str:
        return self.template.format(**{k: _fmt(v) for k, v in values.items()})

    def corner_specs(self) -> list[str]:
        lows = {p.name: p.corners()[0] for p in self.params}
        highs = {p.name: p.corners()[1] for p in self.params}
        return list(dict.fromkeys([self.spec(lows), self.spec(highs)]))

    def suggest(self, trial: Any) -> str:
        return self.spec({p.name: p.suggest(trial, f"{self.name}.{p.name}") for p in self.params})


def _family(name: str, options: Any, where: str) -> Entry:
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"{where}: options must be a mapping of option -> choices, range or value")
    params, parts = [], []
    for key, raw in options.items():
        p = _param(str(key), raw, where)
        if isinstance(p, Param):
            params.append(p)
            parts.append(f"{key}={{{key}}}")
        else:
            parts.append(f"{key}={_fmt(p).replace('{', '{{').replace('}', '}}')}")
    return Entry(name, name + (":" + ",".join(parts) if parts else ""), tuple(params))


def _pipeline(name: str, body: Any, where: str) -> Entry:
    if not isinstance(body, dict) or not isinstance(body.get("template"), str):
        raise ValueError(f"{where}: a pipeline needs template: \"stage + stage\" and options")
    extra = set(body) - {"template", "options"}
    if extra:
        raise ValueError(f"{where}: unknown key {sorted(extra)[0]!r} (allowed: template, options)")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{where}: options must be a mapping")
    fields = {f for _, f, _, _ in string.Formatter().parse(body["template"]) if f is not None}
    params = []
    for key, raw in options.items():
        p = _param(str(key), raw, where)
        params.append(p if isinstance(p, Param) else Param(str(key), (p,)))
    named = {p.name for p in params}
    if fields != named:
        missing, unused = sorted(fields - named), sorted(named - fields)
        raise ValueError(f"{where}: template placeholders and options differ"
                         + (f"; no option for {{{missing[0]}}}" if missing else "")
                         + (f"; option {unused[0]!r} is not in the template" if unused else ""))
    return Entry(name, body["template"], tuple(params), pipeline=True)


@dataclass(frozen=True)
class Space:
    """A validated search space: entries, warm-start seed specs, notes on what was left out."""

    entries: tuple[Entry, ...]
    seeds: tuple[str, ...] = ()
    source: str = ""
    notes: tuple[str, ...] = ()

    def suggest(self, trial: Any) -> str:
        """The spec a trial tries: first which entry, then that entry's options (a
        tree-structured space, so each entry's options are separate parameters)."""
        name = trial.suggest_categorical("entry", [e.name for e in self.entries])
        return next(e for e in self.entries if e.name == name).suggest(trial)


def load_space(path: str | Path | None = None, *, check: bool = True) -> Space:
    """Read and validate a space file (default: the packaged ``default_space.yaml``).
    Every problem is a one-line ValueError naming the file, the entry and what is allowed."""
    import yaml

    path = Path(path) if path else DEFAULT_SPACE
    if not path.is_file():
        raise FileNotFoundError(f"search space {str(path)!r} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"search space {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"search space {path}: expected a mapping with techniques and/or pipelines")
    unknown = set(doc) - {"techniques", "pipelines", "seeds"}
    if unknown:
        raise ValueError(f"search space {path}: unknown key {sorted(unknown)[0]!r} "
                         f"(allowed: techniques, pipelines, seeds)")
    techs, pipes, seeds = doc.get("techniques") or {}, doc.get("pipelines") or {}, doc.get("seeds") or []
    if not isinstance(techs, dict) or not isinstance(pipes, dict) or not isinstance(seeds, list):
        raise ValueError(f"search space {path}: techniques and pipelines are mappings, seeds a list of specs")
    entries = [_family(str(n), o, f"search space {path}: technique {n!r}") for n, o in techs.items()]
    entries += [_pipeline(str(n), b, f"search space {path}: pipeline {n!r}") for n, b in pipes.items()]
    notes: list[str] = []
    seeds = [str(s) for s in seeds]
    if check:
        entries, seeds, notes = _validated(entries, seeds, path)
    if not entries:
        raise ValueError(f"search space {path}: no technique or pipeline to search"
                         + (f" ({notes[0]})" if notes else ""))
    return Space(tuple(entries), tuple(seeds), str(path), tuple(notes))


def _validated(entries: list[Entry], seeds: list[str], path: Path) -> tuple[list[Entry], list[str], list[str]]:
    """Entries whose corner specs ``make`` accepts; pipelines dropped (with a note) where the
    ``pipeline`` technique is not registered."""
    from harness.techniques.base import TECHNIQUES
    from harness.techniques.spec import load_all, make

    load_all()
    keep, notes = [], []
    for e in entries:
        if e.pipeline and "pipeline" not in TECHNIQUES:
            notes.append(f"pipeline {e.name!r} left out: this build has no 'pipeline' technique")
            continue
        for spec in e.corner_specs():
            try:
                make(spec)
            except (ValueError, KeyError) as err:
                raise ValueError(f"search space {path}: {'pipeline' if e.pipeline else 'technique'} "
                                 f"{e.name!r}: {str(err).splitlines()[0]}") from None
        keep.append(e)
    kept_seeds = []
    for s in seeds:
        if " + " in s and "pipeline" not in TECHNIQUES:
            notes.append(f"seed {s!r} left out: this build has no 'pipeline' technique")
            continue
        try:
            make(s)
        except (ValueError, KeyError) as err:
            raise ValueError(f"search space {path}: seed {s!r}: {str(err).splitlines()[0]}") from None
        kept_seeds.append(s)
    return keep, kept_seeds, notes
