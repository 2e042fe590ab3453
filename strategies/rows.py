"""A round's rows, built from what happened: pure functions from data to the dicts the tables hold.

``rounds.csv`` gets :func:`round_row`, ``clients.csv`` one :func:`client_row` per sampled
client, ``fleet.csv`` (living fleets) :func:`fleet_rows`. Nothing here writes, sends or keeps
state: what a run has recorded so far, and the summary's verdict on it, is
:mod:`strategies.history`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtitan.status import Status
from fedtitan.wire import NUM_EXAMPLES, PARTITION_ID, STATUS
from strategies.evaluation import Evaluation
from strategies.fleet import ClientResult

# fleet.timeline = "auto": fleet.csv gets every device's row each round up to this many devices,
# the sampled devices' beyond (100,000 rows cost about 0.4 s and 5 MB a round)
TIMELINE_ALL_MAX = 10_000
_ROW_FIRST = ("sim_time_s", "sim_energy_j", NUM_EXAMPLES, PARTITION_ID, STATUS)  # metrics clients.csv puts first
_FAILED = (Status.FAILED, Status.NONFINITE, Status.DROPPED)
_LEFT_OUT = (Status.STRAGGLER, Status.DECLINED, Status.UNAVAILABLE, Status.LOST, Status.STALE)


@dataclass(frozen=True)
class RoundOutcome:
    """What happened in round ``server_round``: who was sampled, every result, who was
    included, how long it lasted on the virtual clock, whether the model was updated (and why
    not), its evaluation, its wall time and the client states stored during it."""

    server_round: int
    sampled: list[int]
    results: list[ClientResult]
    included: list[ClientResult]
    round_s: float
    updated: bool
    why_not: str
    evaluation: Evaluation
    wall_s: float
    state_io_s: float = 0.0
    state_io_bytes: int = 0


def round_energy_j(results: list[ClientResult]) -> float:
    """The joules a round cost its clients: simulated, or measured (boards) where they measured."""
    return float(sum(r.metrics.get("sim_energy_j", 0.0) if r.metrics.get("measured", 0) < 0.5
                     else np.nan_to_num(r.metrics.get("energy_j", 0.0)) for r in results))


def client_row(rnd: int, r: ClientResult, included: bool, client_accuracy: float) -> dict[str, Any]:
    """One row of clients.csv: who, what happened, and every metric the client sent."""
    return {
        "server_round": rnd, "node_id": r.node_id,
        "partition_id": int(r.metrics[PARTITION_ID]) if PARTITION_ID in r.metrics else -1,
        "device": r.device,
        "status": str(r.status), "included": included, "sim_time_s": r.metrics.get("sim_time_s", math.nan),
        "sim_energy_j": r.metrics.get("sim_energy_j", math.nan), "num_examples": r.metrics.get(NUM_EXAMPLES, 0.0),
        **{k: v for k, v in r.metrics.items() if k not in _ROW_FIRST},
        "client_accuracy": client_accuracy, "error": r.error,
    }


def client_rows(o: RoundOutcome) -> list[dict[str, Any]]:
    """The round's rows of clients.csv, one per sampled client."""
    acc = o.evaluation.client_accuracy or {}
    return [client_row(o.server_round, r, r in o.included, acc.get(r.node_id, math.nan)) for r in o.results]


def round_row(o: RoundOutcome, virtual_s: float, energy_cum_j: float) -> dict[str, Any]:
    """The round's row of rounds.csv; ``virtual_s`` / ``energy_cum_j``: the clock and the
    energy spent at the round's end."""
    ev, results = o.evaluation, o.results
    client_acc = ev.client_accuracy or {}
    return {
        "server_round": o.server_round, "accuracy": ev.accuracy, "loss": ev.loss, "virtual_time_s": virtual_s,
        "round_time_s": o.round_s, "energy_j": round_energy_j(results), "energy_cum_j": energy_cum_j,
        "clients_sampled": len(o.sampled), "clients_ok": len(o.included),
        "clients_failed": sum(r.status in _FAILED for r in results),
        "client_accuracy_mean": float(np.mean(list(client_acc.values()))) if client_acc else math.nan,
        "clients_dropped": sum(r.status in _LEFT_OUT for r in results),
        "updated": o.updated, "wall_s": o.wall_s,
        "measured_energy_missing": sum(r.metrics.get("measured", 0) >= 0.5 and r.metrics.get("energy_available", 1) < 0.5
                                       for r in results),
        "aggregation_error": o.why_not if not o.updated else "",
        "checkpoint_s": o.state_io_s, "checkpoint_bytes": o.state_io_bytes,
    }


def fleet_rows(rnd: int, virtual_s: float, nodes: list[int], partition_of: dict[int, int], devices: list[str],
               factors: Any, sampled: list[int], included: list[ClientResult], timeline: str,
               all_max: int | None = None) -> list[dict[str, Any]]:
    """Every device's state at the round's start (``factors``: a FactorTable of ``nodes`` at
    ``virtual_s``), and whether it was sampled and included (for the per-device timeline of
    the report); only the sampled devices' with ``fleet.timeline = "sampled"`` (or "auto"
    beyond ``all_max`` devices, :data:`TIMELINE_ALL_MAX` by default)."""
    all_max = TIMELINE_ALL_MAX if all_max is None else all_max
    inc, picked = {r.node_id for r in included}, set(sampled)
    every = timeline == "all" or (timeline == "auto" and len(nodes) <= all_max)
    shown = np.arange(len(nodes)) if every else np.flatnonzero([n in picked for n in nodes])
    f = factors
    columns = zip([nodes[i] for i in shown.tolist()],
                  *(a[shown].tolist() for a in (f.available, f.speed_factor, f.select_share, f.bandwidth_factor)),
                  strict=True)
    return [{"server_round": rnd, "virtual_time_s": virtual_s, "partition_id": (pid := partition_of[node]),
             "device": devices[pid], "available": int(up), "speed_factor": speed, "select_share": share,
             "bandwidth_factor": bw, "sampled": int(node in picked), "included": int(node in inc)}
            for node, up, speed, share, bw in columns]
