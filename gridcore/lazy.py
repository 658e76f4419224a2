"""Modules loaded on first use instead of at import: what keeps a short command short.

`defer(name)` puts a stand-in for the module in `sys.modules`; the module itself is imported
the first time an attribute of the stand-in is read (PEP 562's module `__getattr__`), and the
stand-in then forwards to it. An `import` of it, or a `from package import it`, binds the
stand-in and costs nothing. (The standard library's LazyLoader does not survive
`from package import it` on Python 3.11: the import system reads `__spec__`, which loads it.)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

DEFERRED_BY_CLI = ("redis.asyncio",)
"""Modules a `grid` command never uses that a dependency imports anyway: redis-py's package
imports its asyncio client on `import redis` (asyncio itself it needs: its parsers import
names from it)."""


class _Deferred(ModuleType):
    """Stands in for a module until one of its attributes is read."""

    def __getattr__(self, attr: str):
        real = self.__dict__.get("_deferred_real")
        path = self.__dict__.get("__path__")
        if real is None and path is not None:
            sub = f"{self.__name__}.{attr}"
            if sub in sys.modules or importlib.machinery.PathFinder.find_spec(sub, path) is not None:
                return importlib.import_module(sub)  # a submodule: the package body still waits
        if real is None:
            name = self.__name__
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            for key, value in list(self.__dict__.items()):
                # submodules imported meanwhile were bound on the stand-in, not on the package
                if isinstance(value, ModuleType) and not hasattr(real, key):
                    setattr(real, key, value)
            self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


def defer(name: str) -> ModuleType:
    """The module `name`, imported when first used; the module itself when already imported.

    The parent package of a submodule is not imported (its path is looked up, not run)."""
    if name in sys.modules:
        return sys.modules[name]
    parent, _, _ = name.rpartition(".")
    if parent and parent not in sys.modules:
        parent_spec = importlib.util.find_spec(parent)  # a top-level package's spec: nothing runs
        spec = importlib.machinery.PathFinder.find_spec(
            name, parent_spec.submodule_search_locations if parent_spec else None)
    else:
        spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    module = _Deferred(name)
    module.__spec__ = spec
    if spec.submodule_search_locations is not None:
        # its submodules import without running the package's own body
        module.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = module
    return module
