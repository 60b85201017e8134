"""Config dataclasses and the short spec-string syntax ("rtn:bits=4,group=128").

Configs are frozen dataclasses validated in ``__post_init__``; a spec string is parsed
into one by coercing each ``key=value`` to the field's annotated type, so the CLI, the
suites and the Python API all share one validated path.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


class SpecError(ValueError):
    """A malformed spec string or an invalid option value."""


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:k=v,k2=v2"`` into ``("name", {"k": "v", "k2": "v2"})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty technique spec {spec!r}; expected 'name' or 'name:key=value,...'")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise SpecError(f"technique spec {spec!r} has no name; expected 'name:key=value,...'")
    opts: dict[str, str] = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key or not value:
                raise SpecError(f"bad option {part!r} in spec {spec!r}; expected key=value")
            if key in opts:
                raise SpecError(f"option {key!r} given twice in spec {spec!r}")
            opts[key] = value
    return name, opts


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    if isinstance(annotation, str):  # postponed annotations
        annotation = eval(annotation, vars(typing))  # noqa: S307 - type strings from our own dataclasses
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(value, str) and value.lower() in {"none", "null"}:
            return None
        if value is None:
            return None
        last: Exception | None = None
        for a in args:
            try:
                return _coerce(value, a, key)
            except SpecError as e:
                last = e
        raise last or SpecError(f"bad value {value!r} for {key!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        for a in allowed:
            if str(a) == str(value):
                return a
        raise SpecError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
    if not isinstance(value, str):
        return value
    try:
        if annotation is bool:
            low = value.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if annotation is int:
            return int(value)
        if annotation is float:
            return float(value.rstrip("%")) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise SpecError(f"{key}={value!r} is not a valid {annotation.__name__}") from None
    return value


def build_config(cls: type[C], options: Mapping[str, Any], *, context: str = "") -> C:
    """Instantiate dataclass ``cls`` from string/typed options with clear errors."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    where = f" for {context}" if context else ""
    for key, value in options.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(known) or "none"
            raise SpecError(f"unknown option {key!r}{where}{hint} (allowed: {allowed})")
        kwargs[key] = _coerce(value, hints.get(key, str), key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required option
        raise SpecError(f"{e}{where}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})


def _key_value(v: Any) -> str:
    return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


_PY_LITERAL = re.compile(r"=(True|False|None)\b")


def normalize_key(key: str) -> str:
    """A resolved key with Python's ``True``/``False``/``None`` spelled as ``resolved_key``
    spells them (keys written before one function formatted them all: nested pipeline stages)."""
    return _PY_LITERAL.sub(lambda m: "=" + m.group(1).lower(), key)


def resolved_key(technique: str, config: Mapping[str, Any], version: int) -> str:
    """The full resolved config and config version of a technique, the key a baseline entry
    is matched by (``rtn:bits=4,group=128,sym=true@v1``): the one place it is formatted.
    Values are taken as a record stores them (JSON: tuples are lists), so a config in memory
    and the same config read back from a records file give one key."""
    import json

    config = json.loads(json.dumps(dict(config), default=str))
    body = ",".join(f"{k}={_key_value(v)}" for k, v in sorted(config.items()))
    return normalize_key(f"{technique}:{body}@v{version}" if body else f"{technique}@v{version}")


def config_to_spec(name: str, cfg: Any) -> str:
    """Canonical spec string for a config (all non-default options, in field order)."""
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return name
    parts = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if v != default:
            parts.append(f"{f.name}={str(v).lower() if isinstance(v, bool) else v}")
    return f"{name}:{','.join(parts)}" if parts else name


def check(cond: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise SpecError(message) unless cond."""
    if not cond:
        raise SpecError(message)


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is sampled. Repeats run until ``budget_s`` or ``max_repeats``."""

    batch: int = 1
    prompt_len: int = 128
    decode_tokens: int = 32
    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 50
    budget_s: float = 5.0

    def __post_init__(self) -> None:
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")
        check(self.prompt_len >= 1, f"prompt_len={self.prompt_len} must be >= 1")
        check(self.decode_tokens >= 1, f"decode_tokens={self.decode_tokens} must be >= 1")
        check(self.warmup >= 0, f"warmup={self.warmup} must be >= 0")
        check(1 <= self.min_repeats <= self.max_repeats,
              f"min_repeats={self.min_repeats} must be in [1, max_repeats={self.max_repeats}]")
        check(self.budget_s > 0, f"budget_s={self.budget_s} must be > 0")


@dataclass(frozen=True)
class EvalConfig:
    """Accuracy protocol settings: ``max_tokens`` bounds every perplexity/fidelity protocol
    (lm-eval's ``--limit`` in tokens), ``split`` picks the bundled split, and ``text`` (a
    UTF-8 file) replaces the split with any text."""

    window: int = 128
    max_tokens: int | None = None
    batch: int = 8
    split: str = "validation"
    text: str | None = None

    def __post_init__(self) -> None:
        check(self.window >= 2, f"window={self.window} must be >= 2")
        check(self.max_tokens is None or self.max_tokens >= 1, f"max_tokens={self.max_tokens} must be >= 1")
        check(self.split in ("validation", "test", "train"),
              f"split={self.split!r} is not a bundled split; choose one of validation, test, train")
        check(self.max_tokens is None or self.max_tokens >= self.window,
              f"max_tokens={self.max_tokens} must be >= window={self.window}")
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")
