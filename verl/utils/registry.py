"""Name -> entry tables filled by decorators, so that an addition (an advantage estimator, a KL penalty, a loss,
a reward, a prompt format, a data-path scheme) is written in one place: configs check names against the table and
``--help`` lists its keys.

Code outside the library adds entries through plug-ins: a package names a module in its ``verl.plugins`` entry
points (setup.py: ``entry_points={"verl.plugins": ["rule = verl.rule.plugin"]}``) and that module registers its
entries when imported. The library never imports a plug-in by name: the first lookup of a name no table holds loads
every plug-in once, then looks again.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")
PLUGIN_GROUP = "verl.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import the module of every ``verl.plugins`` entry point, once per process (a plug-in that fails to import
    raises here, naming itself in the traceback)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # before loading: a plug-in that looks a name up while importing must not recurse
    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()


class Registry(dict[str, T], Generic[T]):
    """A dict of named entries (iteration order = registration order).

    ``add`` refuses a taken name: two modules defining one name would otherwise replace each other silently, and
    which one wins would depend on import order. ``lookup`` of an unknown name raises a ValueError that lists the
    choices."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``: ``@REWARDS.register("forget")`` above the function."""
        return lambda entry: self.add(name, entry)

    def lookup(self, name: str) -> T:
        """The entry named ``name``; a name no entry has loads the plug-ins (module doc) before giving up."""
        if name not in self:
            load_plugins()
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self)} (the library's own and "
                             f"those of the installed {PLUGIN_GROUP!r} entry points)")
        return self[name]

    def names(self) -> list[str]:
        """Every registered name, the plug-ins' included (loads them)."""
        load_plugins()
        return list(self)
