"""fedtitan: on-device data selection for federated learning on heterogeneous edge fleets.

The ``fedtitan`` package is the library, framework-free (torch, numpy, pandas): Flower and
Ray live in the packages above it, ``clients``, ``strategies`` and ``simulations`` (the
launcher), and nothing here imports them. One documented exception: the Python API
(``fedtitan.run``, ``fedtitan.sweep``, ``fedtitan.resume``, ``fedtitan.load``,
``fedtitan.Run``, ``fedtitan.Sweep``, ``fedtitan.short_errors``) is forwarded, on first use,
to the launcher's :mod:`simulations.api`, so that ``import fedtitan as ft; ft.run(...)``
works and ``import fedtitan`` stays light.
"""

from typing import Any

from fedtitan.errors import FedtitanError

__version__ = "0.1.0"
__all__ = ["FedtitanError", "Run", "Sweep", "__version__", "load", "resume", "run", "short_errors", "sweep"]

_API = ("Run", "Sweep", "load", "resume", "run", "short_errors", "sweep")


def __getattr__(name: str) -> Any:
    """The Python API (see :mod:`simulations.api`), imported on first use: the one place the
    library reaches the launcher above it."""
    if name in _API:
        from simulations import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedtitan' has no attribute {name!r}")
