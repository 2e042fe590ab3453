"""Who takes part in a round: the fleet policy's seeded sample among the devices available now.

With a living fleet (``fleet.dynamics``, a trace) a device's availability, speed and
bandwidth follow the virtual clock; the sample is drawn among the devices available at the
round's start, and every device's factors at that moment come back with it (fleet.csv's rows
are built from them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtitan.devices.dynamics import FleetDynamics
from strategies.fleet import FleetPolicy


@dataclass(frozen=True)
class Sample:
    """The sampled client ids, how many replies the round aggregates, and every client's
    factors at the round's start (a FactorTable; None for a static fleet)."""

    sampled: list[int]
    keep: int
    factors: Any = None


class Sampler:
    """Draws a round's clients by ``policy`` among those ``dynamics`` says are available."""

    def __init__(self, policy: FleetPolicy, dynamics: FleetDynamics) -> None:
        self.policy, self.dynamics = policy, dynamics
        # the partition ids of the nodes last sampled from: (nodes, partition_of, their ids)
        self._ids: tuple[list[int], dict[int, int], np.ndarray] | None = None

    def partition_ids(self, nodes: list[int], partition_of: dict[int, int]) -> np.ndarray:
        """``[partition_of[n] for n in nodes]`` as an array, made once for the same ``nodes`` and
        ``partition_of`` (the server's, fixed once the clients are connected: a round of
        1,000,000 clients then asks no dictionary)."""
        kept = self._ids
        if kept is None or kept[0] is not nodes or kept[1] is not partition_of or len(kept[2]) != len(nodes):
            ids = np.fromiter((partition_of[n] for n in nodes), dtype=np.int64, count=len(nodes))
            kept = self._ids = (nodes, partition_of, ids)
        return kept[2]

    def sample(self, server_round: int, nodes: list[int], partition_of: dict[int, int], virtual_s: float) -> Sample:
        """Unavailable devices are never sampled; ``virtual_s``: the clock at the round's start."""
        if self.dynamics.is_static:
            keep = self.policy.keep(len(nodes))
            return Sample(self.policy.sample(nodes, server_round), keep)
        # every device at the round's start, once (the fleet timeline reads the same)
        factors = self.dynamics.factors_many(self.partition_ids(nodes, partition_of), virtual_s)
        up = list(itertools.compress(nodes, factors.available.tolist()))
        keep = self.policy.keep(len(up), len(nodes))
        return Sample(self.policy.sample(up, server_round, population=len(nodes)), keep, factors)
