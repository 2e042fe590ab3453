"""fedtitan: on-device data selection for federated learning on heterogeneous edge fleets.

The ``fedtitan`` package is framework-free (torch, numpy, pandas): Flower and Ray live in
the sibling packages ``clients``, ``strategies`` and ``simulations``.
"""

from fedtitan.errors import FedtitanError

__version__ = "0.1.0"
__all__ = ["FedtitanError", "__version__"]
