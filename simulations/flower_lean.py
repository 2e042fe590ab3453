"""Flower, imported leaner for a simulation: its SQL stores put off until used (both in a run's
driver and in its Ray client processes, :mod:`simulations.ray_actor`). No Flower or Ray import
here: the local engine's runs import this module too."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

RAY_PROCESSES_ENV = "FEDTITAN_RAY_PROCESSES"

# Flower's SQL-backed stores: (module, class, the modules that import the class by name). A
# simulation keeps its link state and objects in memory and opens neither.
_FLOWER_SQL = (
    ("flwr.supercore.object_store.sql_object_store", "SqlObjectStore",
     ("flwr.supercore.object_store.object_store_factory",)),
    ("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState",
     ("flwr.server.superlink.linkstate.linkstate_factory", "flwr.server.superlink.linkstate")),
)
_FLOWER_SQL_VERSIONS = ("1.41.", "1.42.")  # read: each class is only called by its factory


def lean_flower() -> bool:
    """Whether Flower's SQL stores may be put off here (:func:`defer_flower_sql`): a Flower
    release whose uses of them were read (1.41, 1.42), and no ``FEDTITAN_RAY_PROCESSES=full``."""
    if os.environ.get(RAY_PROCESSES_ENV, "lean") == "full":
        return False
    from importlib import metadata

    try:
        return metadata.version("flwr").startswith(_FLOWER_SQL_VERSIONS)
    except metadata.PackageNotFoundError:
        return False


def defer_flower_sql() -> bool:
    """Let ``import flwr.simulation`` skip SQLAlchemy and Alembic until something uses them.

    Flower's simulation imports its link-state and object-store factories, which import their
    SQL stores at module level: SQLAlchemy and Alembic, about 1 s of a run's start on 2 cores
    (``import flwr.simulation``: 2.05 s with them, measured here), for stores a simulation
    never opens (it keeps everything in memory). Each SQL store's module is stood in for by one
    whose class name is a function that imports the real module when first called, puts the
    real class where the stand-in was and calls it, so a database-backed store still works.
    Only for the Flower releases whose uses of these names were read (1.41, 1.42), only before
    any of them is imported, and not with ``FEDTITAN_RAY_PROCESSES=full``. True when the
    stand-ins are in place."""
    if any(isinstance(sys.modules.get(name), _DeferredModule) for name, _, _ in _FLOWER_SQL):
        return True
    if not lean_flower() or any(
            name in sys.modules for name, _, importers in _FLOWER_SQL for name in (name, *importers)):
        return False
    for name, cls, importers in _FLOWER_SQL:
        sys.modules[name] = _DeferredModule(name, cls, importers)
    return True


class _DeferredModule(types.ModuleType):
    """A stand-in for the module ``name`` whose import is put off (:func:`defer_flower_sql`):
    its ``cls`` imports it when first called and hands over to the real class."""

    def __init__(self, name: str, cls: str, importers: tuple[str, ...]) -> None:
        super().__init__(name)

        def load(*args: Any, **kwargs: Any) -> Any:
            import importlib

            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = getattr(importlib.import_module(name), cls)
            for importer in importers:  # the next call goes straight to the real class
                module = sys.modules.get(importer)
                if module is not None and getattr(module, cls, None) is load:
                    setattr(module, cls, real)
            return real(*args, **kwargs)

        load.__name__ = load.__qualname__ = cls
        setattr(self, cls, load)
