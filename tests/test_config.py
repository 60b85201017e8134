from dataclasses import dataclass
from typing import Literal

import pytest

from harness.config import LatencyConfig, SpecError, build_config, check, config_to_spec, parse_spec


@dataclass(frozen=True)
class Cfg:
    bits: int = 4
    group: int | None = None
    sym: bool = True
    alpha: float = 0.5
    pattern: str | None = None
    mode: Literal["a", "b"] = "a"

    def __post_init__(self):
        check(self.bits in (2, 3, 4, 8), f"bits={self.bits} not supported; allowed: 2, 3, 4, 8")


def test_parse_spec_roundtrip():
    name, opts = parse_spec("rtn:bits=4,group=128,sym=false")
    assert name == "rtn" and opts == {"bits": "4", "group": "128", "sym": "false"}
    cfg = build_config(Cfg, opts)
    assert cfg == Cfg(bits=4, group=128, sym=False)
    assert config_to_spec("rtn", cfg) == "rtn:group=128,sym=false"


def test_coercion_of_optional_literal_percent_and_pattern():
    cfg = build_config(Cfg, {"group": "none", "alpha": "50%", "pattern": "2:4", "mode": "b"})
    assert cfg.group is None and cfg.alpha == 0.5 and cfg.pattern == "2:4" and cfg.mode == "b"


@pytest.mark.parametrize("spec,match", [
    ("", "empty technique spec"),
    (":bits=4", "has no name"),
    ("rtn:bits", "expected key=value"),
    ("rtn:bits=4,bits=3", "given twice"),
])
def test_malformed_specs(spec, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(spec)


def test_bad_values_name_the_value_and_what_is_allowed():
    with pytest.raises(SpecError, match="unknown option 'bitz'.*did you mean 'bits'"):
        build_config(Cfg, {"bitz": "4"})
    with pytest.raises(SpecError, match="bits='four' is not a valid int"):
        build_config(Cfg, {"bits": "four"})
    with pytest.raises(SpecError, match="bits=5 not supported; allowed: 2, 3, 4, 8"):
        build_config(Cfg, {"bits": "5"})
    with pytest.raises(SpecError, match="mode='c' is not allowed; choose one of a, b"):
        build_config(Cfg, {"mode": "c"})
    with pytest.raises(SpecError, match="sym='maybe'"):
        build_config(Cfg, {"sym": "maybe"})


def test_latency_config_validated_on_creation():
    with pytest.raises(SpecError, match="min_repeats=10 must be in"):
        LatencyConfig(min_repeats=10, max_repeats=5)
    with pytest.raises(SpecError, match="prompt_len=0"):
        LatencyConfig(prompt_len=0)
