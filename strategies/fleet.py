"""The server's policy, kept free of training logic: seeded sampling, deadline policies, the
virtual clock, and FedAvg over the included finite updates."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fedtitan.status import Status
from fedtitan.wire import NUM_EXAMPLES


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

    def sample(self, node_ids: list[int], server_round: int, population: int | None = None) -> list[int]:
        """Seeded by (seed, round) over ``node_ids`` in the given order (the server orders them
        by partition id, so a seed picks the same partitions in every run); first-k over-commits.

        ``population``: the fleet's size when ``node_ids`` are only the devices available now;
        the sample is then ``fraction`` of the fleet, or all that are available if fewer."""
        nodes = list(node_ids)
        k = self.keep(len(nodes), population)
        if self.policy == "first-k":
            k = min(len(nodes), math.ceil(k * (1.0 + self.over_commit)))
        rng = np.random.default_rng([self.seed, server_round, 0x5A3B1E])
        picks = np.sort(rng.choice(len(nodes), size=k, replace=False))  # indices: node ids can exceed int64
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


def fedavg(results: list[ClientResult]) -> dict[str, np.ndarray]:
    """Weighted mean by ``num-examples`` (equal weights if all are zero)."""
    weights = np.array([max(r.metrics.get(NUM_EXAMPLES, 0.0), 0.0) for r in results], dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones(len(results))
    weights = weights / weights.sum()
    out: dict[str, np.ndarray] = {}
    first = results[0].arrays
    assert first is not None
    pieces: list[tuple[np.ndarray, list[np.ndarray], int, int]] = []
    for key, ref in first.items():
        if not np.issubdtype(ref.dtype, np.floating):
            out[key] = ref.copy()  # e.g. BatchNorm's num_batches_tracked
            continue
        out[key] = np.empty(ref.shape, dtype=ref.dtype)
        flats = [np.asarray(r.arrays[key]).reshape(-1) for r in results]  # type: ignore[index]
        # a piece at a time, so the float64 sum stays in cache across the clients (twice as
        # fast as whole arrays at MobileNetV1 size; the same operations, the same bits)
        pieces += [(out[key].reshape(-1), flats, a, min(a + _PIECE, ref.size)) for a in range(0, ref.size, _PIECE)]

    def run(chunk: list[tuple[np.ndarray, list[np.ndarray], int, int]]) -> None:
        for flat_out, flats, a, b in chunk:
            acc = np.zeros(b - a, dtype=np.float64)
            for w, flat in zip(weights, flats, strict=True):
                acc += w * flat[a:b]
            flat_out[a:b] = acc

    # numpy lets go of the GIL over a piece: the server's cores share the pieces (each piece
    # is summed as above, so the bits do not depend on how many threads ran)
    size = sum(b - a for _, _, a, b in pieces)
    threads = min(_threads(), max(1, size // (8 * _PIECE)))
    if threads <= 1:
        run(pieces)
    else:
        list(_pool(threads).map(run, [pieces[i::threads] for i in range(threads)]))
    return out


_PIECE = 65536  # elements of a float64 partial sum: 512 KB
_pools: dict[int, ThreadPoolExecutor] = {}


def _threads() -> int:
    """The server's cores (those this process may run on)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="fedtitan-fedavg")
    return _pools[threads]


def finite(arrays: dict[str, np.ndarray]) -> bool:
    return all(np.isfinite(a).all() for a in arrays.values() if np.issubdtype(a.dtype, np.floating))


def finite_each(many: list[dict[str, np.ndarray]]) -> list[bool]:
    """:func:`finite` of each, on the server's cores at once (numpy lets go of the GIL)."""
    threads = min(_threads(), len(many))
    if threads <= 1:
        return [finite(a) for a in many]
    return list(_pool(threads).map(finite, many))
