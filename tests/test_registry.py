import pytest

from harness.registry import Registry, UnknownNameError


def test_unknown_name_suggests_close_match_and_lists_allowed():
    r = Registry("technique")
    r.register("gptq", 1)
    r.register("rtn", 2)
    with pytest.raises(UnknownNameError) as e:
        r.get("gtpq")
    msg = str(e.value)
    assert "'gtpq'" in msg and "did you mean 'gptq'" in msg and "rtn" in msg
    assert "\n" not in msg


def test_duplicate_registration_is_an_error_but_idempotent_for_same_object():
    r = Registry("x")
    obj = object()
    r.register("a", obj)
    r.register("a", obj)
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", object())
