"""Which wheels the GPU machine needs: the harness's runtime requirements (plus the extras the
GPU check uses), walked transitively, against the GPU image's package list.

Standard library plus ``packaging`` only: it runs here (``make gpu-wheels``, the tests) and on
the GPU machine's own python3 before the harness is installed.

- ``gpu/packages-nvidia-h100.txt``: the image's packages (``name`` or ``name==version``), dated.
- ``gpu/wheels.txt``: the wheels ``.whl/`` carries, ``name==version`` (one version each),
  optionally followed by ``; keep=GLOB,GLOB`` (the wheel is slimmed to those package files:
  bitsandbytes ships one CUDA library per CUDA release and the image needs only CUDA 13's).

A requirement is *missing* on the machine when its name is not in the package list, or the
list records a version that the requirement's specifier refuses. Torch, Triton and the
NVIDIA CUDA libraries are never carried: the image's own must do.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_LIST = ROOT / "gpu" / "packages-nvidia-h100.txt"
MANIFEST = ROOT / "gpu" / "wheels.txt"
HARNESS = "llm-compression-harness"
CHECK_EXTRAS = ("gpu",)  # triton (never carried) and bitsandbytes (bnb-nf4, bnb-int8)
NEVER_CARRY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
MAX_TOTAL_MIB = 40.0
# The GPU machine's interpreter (Python 3.12.3, Linux x86-64) for evaluating markers.
TARGET_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "os_name": "posix"}


@dataclass
class PackageList:
    date: str
    versions: dict[str, str | None]  # canonical name -> version (None: present, version unrecorded)


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    keep: tuple[str, ...] = ()  # globs of files to keep inside the package (slimmed wheel)


@dataclass
class Need:
    """One distribution in the requirement closure, and who asked for it with what specifier."""

    name: str
    specs: list[tuple[str, str]] = field(default_factory=list)  # (required by, specifier)

    def specifier(self) -> SpecifierSet:
        out = SpecifierSet()
        for _, s in self.specs:
            out &= SpecifierSet(s)
        return out


def load_package_list(path: Path = PACKAGE_LIST) -> PackageList:
    date, versions = None, {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if m := re.match(r"#\s*date:\s*(\S+)", line):
            date = m.group(1)
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        versions[canonicalize_name(name)] = version.strip() or None
    if not date:
        raise ValueError(f"{path}: no '# date: YYYY-MM-DD' line")
    return PackageList(date, versions)


def load_manifest(path: Path = MANIFEST) -> list[Pin]:
    pins = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, opts = line.partition(";")
        name, sep, version = spec.strip().partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path}: {raw!r} is not name==version")
        keep = ()
        if opts.strip():
            key, _, globs = opts.strip().partition("=")
            if key.strip() != "keep":
                raise ValueError(f"{path}: {raw!r}: only '; keep=GLOB,...' is understood")
            keep = tuple(g.strip() for g in globs.split(",") if g.strip())
        pins.append(Pin(canonicalize_name(name), version.strip(), keep))
    names = [p.name for p in pins]
    if dups := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"{path}: more than one version of {', '.join(dups)} (two stop the whole install)")
    return pins


def harness_requirements(pyproject: Path = ROOT / "pyproject.toml", extras=CHECK_EXTRAS) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _applies(req: Requirement, extras: tuple[str, ...] = ()) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in (extras or ("",)))


def closure(roots: list[Requirement], requires_of, descend=lambda name: True) -> tuple[dict[str, Need], list[str]]:
    """Every distribution ``roots`` need, transitively through those ``descend`` accepts (the
    ones to be carried: a package the image holds brings its own needs, at the image's
    versions). ``requires_of(name)`` gives a distribution's requirement strings, or None
    where its metadata is not at hand (then listed in the second return value)."""
    needs: dict[str, Need] = {}
    unknown: set[str] = set()
    todo = [(HARNESS, r, ()) for r in roots]
    expanded: dict[str, set[str]] = {}  # name -> extras already expanded
    while todo:
        parent, req, parent_extras = todo.pop()
        if not _applies(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        need = needs.setdefault(name, Need(name))
        need.specs.append((parent, str(req.specifier)))
        if not descend(name):
            continue
        extras = expanded.get(name, set()) | set(req.extras)
        if name in expanded and extras == expanded[name]:
            continue
        expanded[name] = extras
        reqs = requires_of(name)
        if reqs is None:
            unknown.add(name)
            continue
        todo += [(name, Requirement(r), tuple(sorted(extras))) for r in reqs]
    return needs, sorted(unknown)


def installed_requires(name: str) -> list[str] | None:
    """Requirement strings from this interpreter's installed metadata (None: not installed)."""
    try:
        return list(md.distribution(name).requires or [])
    except md.PackageNotFoundError:
        return None


def wheel_requires(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def wheel_name_version(whl: Path) -> tuple[str, str]:
    name, version = whl.name.split("-")[:2]
    return canonicalize_name(name), version


@dataclass
class Plan:
    missing: dict[str, Need]     # needed, absent from the image or at a version it refuses
    refused_uncarriable: list[str]  # torch/triton/CUDA libs the image holds at a refused version
    unknown: list[str]           # needs whose own requirements were not at hand
    present: dict[str, Need]     # needed and in the image


def _in_image(pkgs: PackageList, need: Need) -> bool:
    if need.name not in pkgs.versions:
        return False
    have = pkgs.versions[need.name]
    return have is None or need.specifier().contains(Version(have), prereleases=True)


def plan(pkgs: PackageList, requires_of=installed_requires, roots: list[Requirement] | None = None) -> Plan:
    """What the GPU machine lacks, to a fixed point: a need the image holds is not walked
    into, until a later specifier refuses the image's version."""
    roots = harness_requirements() if roots is None else roots
    carry: set[str] = set()
    while True:
        needs, unknown = closure(roots, requires_of, descend=carry.__contains__)
        now = {n for n, need in needs.items() if not _in_image(pkgs, need) and not NEVER_CARRY.match(n)}
        if now == carry:
            break
        carry = now
    missing = {n: needs[n] for n in sorted(carry)}
    present = {n: need for n, need in sorted(needs.items()) if n not in carry and _in_image(pkgs, need)}
    refused = [f"{n} {pkgs.versions.get(n, 'absent')} (needs {need.specifier()})"
               for n, need in sorted(needs.items()) if n not in carry and not _in_image(pkgs, need)]
    return Plan(missing, refused, unknown, present)


def unrecorded_versions(pkgs: PackageList, p: Plan) -> list[str]:
    """Needs the image holds at a version nobody recorded, with a specifier that could refuse
    it: the GPU check reads their real versions there."""
    return [f"{n}{need.specifier()}" for n, need in p.present.items()
            if pkgs.versions.get(n) is None and str(need.specifier())]


def check_manifest(p: Plan, pins: list[Pin]) -> list[str]:
    """Problems with the manifest against a plan: one line each (empty: complete)."""
    problems = []
    by_name = {pin.name: pin for pin in pins}
    for pin in pins:
        if NEVER_CARRY.match(pin.name):
            problems.append(f"{pin.name} must never be carried: the GPU image's own is used")
    for name, need in p.missing.items():
        if name == canonicalize_name(HARNESS):
            continue
        pin = by_name.get(name)
        if pin is None:
            who = ", ".join(sorted({w for w, _ in need.specs}))
            problems.append(f"{name}{need.specifier()} (needed by {who}) is missing on the GPU machine "
                            f"and not in {MANIFEST.name}")
        elif not need.specifier().contains(Version(pin.version), prereleases=True):
            problems.append(f"{name}=={pin.version} in {MANIFEST.name} does not satisfy {need.specifier()}")
    problems += [f"cannot carry: the image's {r}" for r in p.refused_uncarriable]
    return problems


def verify_installed(carried: set[str], absent_ok: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """This interpreter's installed versions of what the harness needs (walked through the
    carried packages), against our specifiers: (report lines, problems)."""
    needs, _ = closure(harness_requirements(), installed_requires, descend=lambda n: n in carried)
    lines, problems = [], []
    for name, need in sorted(needs.items()):
        spec = need.specifier()
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            line = f"ABSENT    {name}{spec}"
            (lines if name in absent_ok else problems).append(line + ("  (allowed here)" if name in absent_ok else ""))
            continue
        ok = spec.contains(Version(have), prereleases=True)
        line = f"{'ok' if ok else 'MISMATCH':9s} {name}=={have}" + (f"  needs {spec}" if str(spec) else "")
        lines.append(line)
        if not ok:
            problems.append(line)
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="the GPU machine's packages against the harness's needs")
    ap.add_argument("--verify-installed", action="store_true",
                    help="check this interpreter's installed versions (on the GPU machine: image + .whl)")
    ap.add_argument("--absent-ok", action="append", default=[], help="a carried package this rehearsal may lack")
    args = ap.parse_args(argv)
    pkgs, pins = load_package_list(), load_manifest()
    if args.verify_installed:
        lines, problems = verify_installed({p.name for p in pins}, {canonicalize_name(n) for n in args.absent_ok})
        print("\n".join(lines + problems))
        print(f"gpu-deps: {len(lines) + len(problems)} needs, {len(problems)} problem(s)")
        return 1 if problems else 0
    p = plan(pkgs)
    for name, need in p.missing.items():
        print(f"missing   {name}{need.specifier()}  (by {', '.join(sorted({w for w, _ in need.specs}))})")
    for line in unrecorded_versions(pkgs, p):
        print(f"unrecorded version in the image: {line}")
    problems = check_manifest(p, pins)
    print("\n".join(problems) or f"gpu-deps: {MANIFEST.name} is complete against the package list of {pkgs.date}")
    return 1 if problems else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
