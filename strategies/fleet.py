"""The server's policy, kept free of training logic: seeded sampling, deadline policies and the
virtual clock, over the clients' results it judges (:class:`ClientResult`). The arithmetic on
their weights is :mod:`strategies.weights`'s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedtitan.status import Status


@dataclass
class ClientResult:
    """One client's reply in a round (or its failure)."""

    node_id: int
    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = None
    error: str = ""
    raw: object = None  # the reply message itself, for a Flower strategy's aggregate_train
    device: str = ""  # the device's name, as the client reported it ("" when it never replied)

    @property
    def time_s(self) -> float:
        """Seconds on the virtual clock: measured wall time for measured devices, else simulated."""
        if self.metrics.get("measured", 0.0) >= 0.5:
            return float(self.metrics.get("wall_s", 0.0))
        return float(self.metrics.get("sim_time_s", 0.0))

    @property
    def trained(self) -> bool:
        return self.status.trained


@dataclass(frozen=True)
class FleetPolicy:
    fraction: float
    min_clients: int
    policy: str = "wait-all"  # wait-all | deadline | first-k
    deadline_s: float | None = None
    over_commit: float = 0.0
    seed: int = 0
    clients_per_round: int | None = None  # an absolute number sampled, in place of ``fraction``

    def target(self, available: int) -> int:
        wanted = (self.clients_per_round if self.clients_per_round is not None
                  else int(round(self.fraction * available)))
        return min(available, max(self.min_clients, wanted))

    def keep(self, available: int, population: int | None = None) -> int:
        """How many replies a round aggregates: ``fraction`` of the fleet (``population``, or
        the ``available`` devices), or ``clients_per_round`` when given, at least
        ``min_clients``, at most what is available."""
        return min(available, self.target(population if population is not None else available))

    def sample(self, node_ids: Sequence[int], server_round: int, population: int | None = None) -> list[int]:
        """Seeded by (seed, round) over ``node_ids`` in the given order (the server orders them
        by partition id, so a seed picks the same partitions in every run); first-k over-commits.

        ``population``: the fleet's size when ``node_ids`` are only the devices available now;
        the sample is then ``fraction`` of the fleet, or all that are available if fewer."""
        nodes = node_ids if isinstance(node_ids, (list, tuple, range)) else list(node_ids)  # no copy of a fleet
        k = self.keep(len(nodes), population)
        if self.policy == "first-k":
            k = min(len(nodes), math.ceil(k * (1.0 + self.over_commit)))
        return self.draw(nodes, server_round, k)

    def draw(self, nodes: Sequence[int], key: int, k: int) -> list[int]:
        """``k`` of ``nodes`` (at most all), seeded by (seed, ``key``), in the given order: a
        round's sample (``key``: the round) or an asynchronous dispatch's (the dispatch's number)."""
        rng = np.random.default_rng([self.seed, key, 0x5A3B1E])
        picks = np.sort(rng.choice(len(nodes), size=min(k, len(nodes)), replace=False))  # indices: ids can exceed int64
        return [nodes[int(i)] for i in picks]

    def include(self, results: list[ClientResult], keep: int) -> tuple[list[ClientResult], float]:
        """Mark stragglers, return (included results, round duration on the virtual clock).
        ``keep``: what :meth:`keep` gave at sampling (first-k aggregates the ``keep`` fastest
        of its over-committed sample)."""
        trained = [r for r in results if r.trained]
        others = [r for r in results if not r.trained and r.status not in (Status.FAILED, Status.DROPPED)]
        waited = max([r.time_s for r in trained + others], default=0.0)
        if self.policy == "deadline" and self.deadline_s is not None:
            late = [r for r in trained if r.time_s > self.deadline_s]
            for r in late:
                r.status = Status.STRAGGLER
            included = [r for r in trained if r.status != Status.STRAGGLER]
            return included, (self.deadline_s if late else waited)
        if self.policy == "first-k":
            ordered = sorted(trained, key=lambda r: (r.time_s, r.node_id))
            for r in ordered[keep:]:
                r.status = Status.STRAGGLER
            included = ordered[:keep]
            return included, (included[-1].time_s if included else waited)
        return trained, waited
