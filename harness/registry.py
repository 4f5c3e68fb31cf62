"""Registries of the named things rlgauge runs: env backends and algorithms.

A registry maps a name to an entry and knows why an entry cannot run here (a library that is not
installed, a check that fails) without crashing. Adding a backend or an algorithm is one
``register`` call in the module that implements it; ``load_builtins()`` imports those modules so
that the registries are full before ``python -m harness list`` or a run reads them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UsageError


@dataclass(frozen=True)
class Entry:
    """One registered thing.

    ``value`` is whatever the registry's users need (a backend object, a module path);
    ``requires`` lists importable modules it needs; ``check`` is an optional deeper test that
    returns a reason string when the entry cannot run here, or None.
    """

    name: str
    value: Any
    description: str = ""
    requires: tuple[str, ...] = ()
    check: Callable[[], str | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Name -> Entry, with availability reasons. ``kind`` names the thing in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._reasons: dict[str, str | None] = {}

    def register(
        self,
        name: str,
        value: Any,
        *,
        description: str = "",
        requires: tuple[str, ...] = (),
        check: Callable[[], str | None] | None = None,
        **meta: Any,
    ) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(name, value, description, tuple(requires), check, dict(meta))
        self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> Entry:
        """The entry called ``name``; UsageError naming the valid choices otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self._entries) or "none registered"
            raise UsageError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def unavailable_reason(self, name: str) -> str | None:
        """Why ``name`` cannot run here (cached), or None when it can."""
        if name not in self._reasons:
            self._reasons[name] = _reason(self.get(name))
        return self._reasons[name]

    def available(self) -> list[str]:
        return [e.name for e in self if self.unavailable_reason(e.name) is None]

    def require_available(self, name: str) -> Entry:
        """The entry, if it can run here; UsageError with the reason and the runnable choices."""
        entry = self.get(name)
        reason = self.unavailable_reason(name)
        if reason is not None:
            ok = ", ".join(self.available()) or "none"
            raise UsageError(f"{self.kind} {name!r} is unavailable here ({reason}); "
                             f"available: {ok}")
        return entry


def _reason(entry: Entry) -> str | None:
    for module in entry.requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"module {module!r} is not installed"
    if entry.check is not None:
        try:
            return entry.check()
        except Exception as exc:  # a broken library must not crash `list`
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


BACKENDS = Registry("backend")
ALGORITHMS = Registry("algorithm")

# Modules whose import registers the built-in entries (each adds itself with one call).
BUILTIN_MODULES: tuple[str, ...] = ("harness.backends", "reference_impls")


#: Environment variable naming extra modules to load after the built-ins: comma-separated module
#: names or paths to ``.py`` files, each registering backends or algorithms of its own (a
#: user's simulator, the fault-injection backend of the tests). The matrix passes it on to
#: its worker processes.
PLUGINS_ENV = "RLGAUGE_PLUGINS"
_loaded_plugins: set[str] = set()


def load_builtins() -> None:
    """Import the modules that register the built-in backends and algorithms, then the plugins
    named in ``$RLGAUGE_PLUGINS`` (idempotent). A plugin that cannot be loaded is a UsageError
    naming it."""
    import os
    import sys

    for module in BUILTIN_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    for item in filter(None, (p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(","))):
        if item in _loaded_plugins:
            continue
        try:
            if item.endswith(".py"):
                name = f"rlgauge_plugin_{abs(hash(os.path.abspath(item))):x}"
                spec = importlib.util.spec_from_file_location(name, item)
                if spec is None or not os.path.isfile(item):
                    raise ImportError(f"no such file {item!r}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except ImportError as exc:
            raise UsageError(f"plugin {item!r} from ${PLUGINS_ENV} cannot be loaded: "
                             f"{exc}") from None
        _loaded_plugins.add(item)
