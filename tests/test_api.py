"""The public API is unambiguous: importing any submodule never shadows an exported name."""
import importlib
import pkgutil

import harness


def test_every_exported_name_survives_importing_every_submodule():
    names = []
    for info in pkgutil.walk_packages(harness.__path__, "harness."):
        if info.name.startswith("harness.kernels.") and info.name.split(".")[-1] in ("w4a16", "qlr", "w8a16"):
            continue  # Triton kernel modules need the optional triton package
        importlib.import_module(info.name)
        names.append(info.name)
    assert "harness.evaluation" in names and len(names) > 40
    submodules = {n.split(".")[1] for n in names}
    for name in harness.__all__:
        assert name not in submodules, f"harness.{name} is both an export and a submodule"
        obj = getattr(harness, name)
        if name != "__version__":
            module = harness._EXPORTS[name]
            assert obj is getattr(importlib.import_module(module), name), name
    assert callable(harness.evaluate) and harness.evaluate.__module__ == "harness.evaluation"
