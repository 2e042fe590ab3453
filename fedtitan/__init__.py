"""fedtitan: on-device data selection for federated learning on heterogeneous edge fleets.

The ``fedtitan`` package is framework-free (torch, numpy, pandas): Flower and Ray live in
the sibling packages ``clients``, ``strategies`` and ``simulations``. The Python API
(``fedtitan.run``, ``fedtitan.sweep``, ``fedtitan.load``, ``fedtitan.resume``) is in
:mod:`fedtitan.api`; it loads them when a simulation starts.
"""

from typing import Any

from fedtitan.errors import FedtitanError

__version__ = "0.1.0"
__all__ = ["FedtitanError", "Run", "Sweep", "__version__", "load", "resume", "run", "sweep"]

_API = ("Run", "Sweep", "load", "resume", "run", "sweep")


def __getattr__(name: str) -> Any:
    """The Python API (``fedtitan.run``, ``fedtitan.sweep``, ...; see :mod:`fedtitan.api`),
    imported on first use so that ``import fedtitan`` stays light."""
    if name in _API:
        from fedtitan import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedtitan' has no attribute {name!r}")
