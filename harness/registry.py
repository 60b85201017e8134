"""Name -> object registries with "did you mean" errors.

Every user-facing name (technique, model, metric, layer class) resolves through a
Registry so that a typo gets one line naming the bad value and what is allowed.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message suggests close matches."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` under ``name``; usable as a decorator when obj is omitted."""

        def _add(o: T) -> T:
            if name in self._items and not replace and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        if obj is None:
            return _add
        return _add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        allowed = sorted(self._items)
        close = difflib.get_close_matches(str(name), allowed, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (allowed: {', '.join(allowed)})"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def names(self) -> list[str]:
        return sorted(self._items)

    def ordered(self) -> list[T]:
        """Registered objects in registration order (tables that have a natural order)."""
        return list(self._items.values())


def lazy(fn: Callable[[], None]) -> Callable[[], None]:
    """Run a populating function once (used to import technique modules on demand)."""
    done = False

    def wrapper() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return wrapper
