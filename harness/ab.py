"""``harness run --against REF``: the base commit measured on this host, interleaved with the
working tree, and the working tree judged against it.

A stored baseline judges speed only on the device class that wrote it; a CI runner or a
vendor's machine has none. asv answers this with ``asv continuous BASE HEAD``; here REF is
checked out once into a detached git worktree under the cache (reused while it is clean),
both trees run the same suite selection with this interpreter and its installed packages,
in ABBA order (base, head, head, base, ...) so drift of the host hits both sides alike, and
the base runs become the baseline (``harness.baselines.store.update``) that ``judge_run``
judges the head's runs against, with the run-to-run noise of both sides' repeats.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.baselines.judge import Verdict
from harness.paths import cache_root

BASE, HEAD = "base", "head"


class AgainstError(ValueError):
    """A bad REF, a directory that is not a git checkout, or a dirty worktree cache."""


def _git(args: list[str], cwd: Path) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise AgainstError(f"git {' '.join(args)} failed: {e}") from None
    if out.returncode != 0:
        msg = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise AgainstError(f"git {' '.join(args)} failed in {cwd}: {msg}")
    return out.stdout.strip()


@dataclass(frozen=True)
class Base:
    """The checked-out base: the ref as given, its commit, its worktree, the head's checkout."""

    ref: str
    sha: str
    tree: Path
    top: Path

    @property
    def label(self) -> str:
        return f"{self.ref} @ {self.sha[:12]}, same host, interleaved"


def toplevel(cwd: Path) -> Path:
    try:
        return Path(_git(["rev-parse", "--show-toplevel"], cwd))
    except AgainstError:
        raise AgainstError(f"--against needs a git checkout: {cwd} is not inside one") from None


def resolve(top: Path, ref: str) -> str:
    try:
        return _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], top)
    except AgainstError:
        raise AgainstError(f"--against {ref!r} is not a commit of {top} (usual choices: origin/main, or the "
                           f"merge base: $(git merge-base origin/main HEAD))") from None


def checkout(top: Path, ref: str) -> Base:
    """REF's worktree under the cache: made once per commit, reused while clean."""
    sha = resolve(top, ref)
    repo = hashlib.sha256(str(top.resolve()).encode()).hexdigest()[:10]
    tree = cache_root() / "worktrees" / f"{top.name}-{repo}" / sha[:12]
    if tree.exists():
        try:
            at, dirty = _git(["rev-parse", "HEAD"], tree), _git(["status", "--porcelain"], tree)
        except AgainstError:  # a stale cache entry (its repository was removed or cloned anew): remade
            shutil.rmtree(tree, ignore_errors=True)
            _git(["worktree", "prune"], top)
        else:
            if at != sha or dirty:
                raise AgainstError(f"worktree cache {tree} is dirty or not at {sha[:12]}; remove it with: "
                                   f"git worktree remove --force {tree}")
            return Base(ref, sha, tree, top)
    tree.parent.mkdir(parents=True, exist_ok=True)
    try:
        _git(["worktree", "add", "--detach", str(tree), sha], top)
    except AgainstError:
        shutil.rmtree(tree, ignore_errors=True)
        _git(["worktree", "prune"], top)
        raise
    return Base(ref, sha, tree, top)


def lock_note(base: Base, lock: str = "requirements.lock") -> str:
    """One line when REF pins other versions than the working tree (one environment serves both)."""
    try:
        theirs = _git(["show", f"{base.sha}:{lock}"], base.top)
    except AgainstError:
        return ""
    mine = (base.top / lock).read_text(encoding="utf-8").strip() if (base.top / lock).is_file() else ""
    return "" if theirs.strip() == mine else (f"{base.ref} @ {base.sha[:12]} pins other versions in {lock}: "
                                              f"base measured with the head's dependencies")


def order(n: int) -> list[tuple[str, int]]:
    """ABBA: base 1, head 1, head 2, base 2, base 3, head 3, ..."""
    out: list[tuple[str, int]] = []
    for i in range(n):
        out += [(BASE, i + 1), (HEAD, i + 1)] if i % 2 == 0 else [(HEAD, i + 1), (BASE, i + 1)]
    return out


def in_tree(suite: str, top: Path, tree: Path) -> str:
    """The same suite file (or node id) inside ``tree``; a path outside the checkout stays as given."""
    path, sep, node = suite.partition("::")
    p = Path(path).resolve()
    try:
        rel = p.relative_to(top.resolve())
    except ValueError:
        return suite
    return str(tree / rel) + sep + node


def child_env(tree: Path) -> dict[str, str]:
    """This interpreter's environment with ``tree`` first on the import path, so a tree that
    holds the harness runs its own code (and a tree that does not, the installed one)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(tree) + (os.pathsep + path if path else "")}


def judge_against(out: Path, base_dirs: list[Path], base: Base) -> list[Verdict]:
    """The head run in ``out`` judged against the base runs (written as a baseline under
    ``out/baseline``); base entries the head never measured are ``missing``."""
    from harness.baselines.store import BaselineStore, baseline_key, update
    from harness.baselines.verdicts import judge_run, write_verdicts
    from harness.records import load_records
    from harness.rundir import read_reference, read_run_info, write_run_info

    base_records = [r for d in base_dirs for r in load_records(d, skip_bad_lines=True)]
    root = out / "baseline"
    update(base_records, root, run_id=base.label, fingerprint=read_run_info(base_dirs[0]).get("fingerprint"))
    head = list(load_records(out))
    store = BaselineStore(root)
    vs = judge_run(head, store, fingerprint=read_run_info(out).get("fingerprint"),
                   reference=[r for d in sorted((out / HEAD).iterdir()) for r in read_reference(d)])
    seen = {(r.suite, r.device_class, *baseline_key(r)) for r in head}
    for suite, dc in sorted({(r.suite, r.device_class) for r in base_records if r.suite and r.device_class}):
        bf = store.get(suite, dc)
        for key, ent in sorted(bf.entries.items()) if bf else []:
            if (suite, dc, *key) not in seen:
                vs += [Verdict("missing", m, ent.model, ent.spec, ent.profile, ent.test_id, mb.value, None,
                               mb.tolerance, f"measured by the base ({base.ref}), not by the head")
                       for m, mb in sorted(ent.metrics.items())]
    write_verdicts(out, vs, root, {r.suite for r in head if r.suite})
    write_run_info(out, baselines=str(root), baseline_source=base.label, lock_note=lock_note(base))
    return vs
