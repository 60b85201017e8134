"""Collect into .whl/ the wheels the GPU machine lacks (``make gpu-wheels``).

    .venv/bin/python scripts/gpu_wheels.py           # build + download + check, prints the total size
    .venv/bin/python scripts/gpu_wheels.py --check   # no network: the manifest against the package list

1. The harness's own wheel, built from this working tree (``pip wheel --no-deps``).
2. Every pin of ``gpu/wheels.txt``: ``pip download --only-binary=:all: --no-deps`` for CPython
   3.12 manylinux x86-64; a pin with no wheel on the index (some pure-Python packages ship an
   sdist only) is built here with ``pip wheel --no-deps`` and accepted only if pure
   (``py3-none-any``). A ``keep=`` pin is repacked with only the shared libraries it names.
3. Wheels in .whl/ that no pin names are removed (two versions of one package stop the install).
4. The set is checked against the GPU image's package list with the downloaded wheels' own
   metadata (``Requires-Dist``), and its total size printed; over 40 MiB fails.
Torch and Triton are never carried. Exit 0 ok, 1 a check failed, 2 a download/build failed.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_deps as deps  # noqa: E402

DEST = deps.ROOT / ".whl"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
HARNESS_WHEEL = "llm_compression_harness-"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def _find(dest: Path, pin: deps.Pin) -> Path | None:
    for whl in sorted(dest.glob("*.whl")):
        if deps.wheel_name_version(whl) == (pin.name, pin.version):
            return whl
    return None


def fetch(pin: deps.Pin, dest: Path) -> tuple[Path | None, str]:
    """The pin's wheel in ``dest`` (downloaded or built), and how it got there."""
    if whl := _find(dest, pin):
        return whl, "cached"
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    r = _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
             "--implementation", "cp", *plat, "-d", str(dest), f"{pin.name}=={pin.version}")
    if r.returncode == 0 and (whl := _find(dest, pin)):
        return whl, "downloaded"
    with tempfile.TemporaryDirectory() as tmp:  # sdist only: build it, accept only a pure wheel
        b = _pip("wheel", "-q", "--no-deps", "-w", tmp, f"{pin.name}=={pin.version}")
        built = sorted(Path(tmp).glob("*.whl"))
        if b.returncode != 0 or not built:
            return None, f"no wheel for {pin.name}=={pin.version}: {(r.stderr or b.stderr).strip()[-300:]}"
        if not built[0].name.endswith("-none-any.whl"):
            return None, f"{built[0].name} built from the sdist is not pure Python: it would not run there"
        target = dest / built[0].name
        target.write_bytes(built[0].read_bytes())
    return target, "built from sdist (pure)"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim(whl: Path, keep: tuple[str, ...]) -> int:
    """Drop the wheel's shared libraries that match no ``keep`` glob; rewrite RECORD. Returns
    the number of files dropped (0: already slim)."""
    with zipfile.ZipFile(whl) as z:
        items = [(i, z.read(i.filename)) for i in z.infolist()]
    def is_lib(n: str) -> bool:
        return fnmatch.fnmatch(n, "*.so") or fnmatch.fnmatch(n, "*.so.*")
    drop = {i.filename for i, _ in items
            if is_lib(i.filename) and not any(fnmatch.fnmatch(i.filename, g) for g in keep)}
    kept_libs = [i.filename for i, _ in items if is_lib(i.filename) and i.filename not in drop]
    if not kept_libs:
        raise ValueError(f"{whl.name}: keep={','.join(keep)} matches none of its shared libraries")
    if not drop:
        return 0
    record = next(i.filename for i, _ in items if i.filename.endswith(".dist-info/RECORD"))
    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        lines = []
        for info, data in items:
            if info.filename in drop or info.filename == record:
                continue
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            lines.append(_record_line(info.filename, data))
        z.writestr(record, "\n".join(lines + [f"{record},,"]) + "\n")
    tmp.replace(whl)
    return len(drop)


def build_harness(dest: Path) -> Path:
    for old in dest.glob(HARNESS_WHEEL + "*.whl"):
        old.unlink()
    r = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(deps.ROOT))
    built = sorted(dest.glob(HARNESS_WHEEL + "*.whl"))
    if r.returncode != 0 or not built:
        raise RuntimeError(f"building the harness wheel failed: {r.stderr.strip()[-500:]}")
    return built[0]


def check_wheels(dest: Path, pins: list[deps.Pin], pkgs: deps.PackageList) -> list[str]:
    """The set in ``dest`` against the package list, with the wheels' own Requires-Dist."""
    wheels = {deps.wheel_name_version(w)[0]: w for w in dest.glob("*.whl")}
    problems = [f"{p.name}=={p.version}: no wheel in {dest}" for p in pins if p.name not in wheels]
    harness = wheels.get(deps.canonicalize_name(deps.HARNESS))
    if harness is None:
        return problems + [f"the harness wheel is not in {dest}"]
    reqs = deps.wheel_requires(harness)
    roots = [deps.Requirement(r) for r in reqs if deps._applies(deps.Requirement(r), deps.CHECK_EXTRAS)]
    def requires_of(name: str):
        return deps.wheel_requires(wheels[name]) if name in wheels else None
    p = deps.plan(pkgs, requires_of=requires_of, roots=roots)
    problems += deps.check_manifest(p, pins)
    problems += [f"{n}: needed, but its wheel (and so its own needs) is missing" for n in p.unknown]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=DEST)
    ap.add_argument("--check", action="store_true", help="no network: the manifest against the package list")
    args = ap.parse_args(argv)
    pkgs, pins = deps.load_package_list(), deps.load_manifest()
    offline = deps.check_manifest(deps.plan(pkgs), pins)
    if args.check or offline:
        for line in offline:
            print(f"gpu-wheels: {line}", file=sys.stderr)
        print(f"gpu-wheels: {len(pins)} pins against the package list of {pkgs.date}: "
              f"{'complete' if not offline else f'{len(offline)} problem(s)'}")
        return 1 if offline else 0
    args.dest.mkdir(exist_ok=True)
    rows = [(build_harness(args.dest), "built from this tree")]
    for pin in pins:
        whl, how = fetch(pin, args.dest)
        if whl is None:
            print(f"gpu-wheels: {how}", file=sys.stderr)
            return 2
        if pin.keep and (n := slim(whl, pin.keep)):
            how += f", slimmed ({n} shared libraries dropped)"
        elif pin.keep:
            how += ", slim"
        rows.append((whl, how))
    wanted = {r[0].name for r in rows}
    for stale in sorted(args.dest.glob("*.whl")):
        if stale.name not in wanted:
            print(f"gpu-wheels: removing {stale.name} (no pin names it)")
            stale.unlink()
    problems = check_wheels(args.dest, pins, pkgs)
    total = sum(w.stat().st_size for w, _ in rows)
    for whl, how in rows:
        print(f"{whl.stat().st_size / 2**20:7.2f} MiB  {whl.name}  ({how})")
    print(f"gpu-wheels: {len(rows)} wheels in {args.dest}, total {total / 2**20:.2f} MiB "
          f"(limit {deps.MAX_TOTAL_MIB:g} MiB); package list of {pkgs.date}")
    for line in problems:
        print(f"gpu-wheels: {line}", file=sys.stderr)
    if total > deps.MAX_TOTAL_MIB * 2**20:
        print(f"gpu-wheels: total {total / 2**20:.2f} MiB is over {deps.MAX_TOTAL_MIB:g} MiB", file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
