"""The default suite's parameters: one ``pytest.param`` per suite spec of every registered
technique, so a technique joins the suite by registering itself."""
from __future__ import annotations

import pytest


def technique_params(quick: bool, specs: list[str] | None = None) -> list:
    """One ``pytest.param`` per suite spec of every registered technique (the reference
    first): the first spec of each technique in quick mode, all of them otherwise.
    ``specs`` (``--harness-technique``) replaces that list: the reference, then these.
    CUDA-only techniques carry the ``gpu`` marker; techniques that declare no
    ``suite_specs`` (and family modules that failed to import) appear as skipped with the
    reason, so nothing disappears silently."""
    from harness.techniques import IMPORT_ERRORS, TECHNIQUES

    if specs:
        from harness.techniques.spec import make

        chosen = [make(spec) for spec in specs]  # bad spec: one-line error at collection
        return [pytest.param("none", id="none")] + [
            pytest.param(spec, id=spec, marks=[pytest.mark.gpu] if t.requires_cuda else [])
            for spec, t in zip(specs, chosen) if spec != "none"]
    params = []
    names = sorted(TECHNIQUES, key=lambda n: (n != "none", TECHNIQUES.get(n).family, n))
    for name in names:
        cls = TECHNIQUES.get(name)
        specs = list(cls.suite_specs[:1] if quick else cls.suite_specs)
        marks = [pytest.mark.gpu] if cls.requires_cuda else []
        if not specs:
            params.append(pytest.param(name, id=name, marks=[pytest.mark.skip(
                reason=f"technique {name!r} declares no suite_specs")]))
        params += [pytest.param(spec, id=spec, marks=marks) for spec in specs]
    params += [pytest.param(mod, id=mod.rsplit(".", 1)[-1], marks=[pytest.mark.skip(
        reason=f"technique module {mod} failed to import: {err}")]) for mod, err in IMPORT_ERRORS.items()]
    return params
