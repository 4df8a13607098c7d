"""One registration pattern for every kind of part: a dict per kind, filled by a decorator.

Tasks, steps (techniques), zoo models and backends all register here under the name a recipe
uses. ``load_builtins()`` imports the modules that hold slimkit's own registrations.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from slimkit.core.errors import SlimkitError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object, the config class that validates its parameters, and a summary."""

    name: str
    obj: T
    config: type | None
    summary: str


class Registry(Generic[T]):
    """A named dict of entries of one kind, with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, config: type | None = None, summary: str | None = None) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; the name is what recipes write."""

        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise SlimkitError(f"{self.kind} {name!r} is registered twice")
            doc = summary if summary is not None else (getattr(obj, "__doc__", None) or "")
            self._entries[name] = Entry(name, obj, config, first_sentence(doc))
            return obj

        return decorate

    def entry(self, name: str) -> Entry[T]:
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        return f"unknown {self.kind} {name!r}{hint} (known: {known})"

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        load_builtins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return [e.name for e in self]


TASKS: Registry[Any] = Registry("task")
STEPS: Registry[Any] = Registry("step")
MODELS: Registry[Any] = Registry("model")
BACKENDS: Registry[Any] = Registry("backend")

# Modules whose import registers slimkit's own parts. Each must import only light dependencies
# at module level: optional packages are imported inside the functions that need them.
_BUILTIN_MODULES = (
    "slimkit.zoo",
    "slimkit.tasks",
    "slimkit.train.step",
    "slimkit.techniques",
    "slimkit.backends",
    "slimkit.nas.step",
)
_loaded = False


def load_builtins() -> None:
    """Import slimkit's registering modules once (lazily, so ``import slimkit`` stays light)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, whole even when it wraps over lines."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    for match in re.finditer(r"[.!?](?=\s|$)", paragraph):
        before = paragraph[:match.end()]
        if not re.search(r"\b(e\.g|i\.e|etc|vs|cf)\.$", before):
            return before
    return paragraph
