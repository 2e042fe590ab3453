"""The cost model: FLOPs and bytes -> simulated seconds and joules, per phase. Pure functions.

* training a batch of B: ``3 x forward FLOPs x B`` (forward + backward ~ 2x forward) at the
  profile's ``train_flops``;
* coarse filtering: forward through the first blocks at ``select_flops`` over every sample
  the filter scores in a step: the ``v`` new ones, plus the kept candidates it re-scores with
  the current model (Titan's default ``carry_over`` + ``refresh``: up to ``v + buffer``);
* fine selection over a buffer of K: a full forward of the buffer at ``select_flops``;
* evaluation: forward only at ``train_flops``;
* model exchange: bytes / bandwidth, at ``radio_w``.

Energy: ``idle_w x wall + sum over phases (phase_w - idle_w) x phase busy time``. A pipelined
step lasts ``max(train, select) + sync``; a sequential one ``train + select``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedtitan.devices.catalog import DeviceProfile

TRAIN_FACTOR = 3.0  # training FLOPs per forward FLOP (forward + backward)
SYNC_BYTES_PER_S = 2e9  # in-memory model copy between the two units (one sync per step)


@dataclass(frozen=True)
class PhaseCost:
    time_s: float
    energy_j: float


@dataclass(frozen=True)
class RoundCost:
    """Simulated cost of one client round, with the per-phase breakdown."""

    time_s: float
    energy_j: float
    phases: dict[str, PhaseCost] = field(default_factory=dict)


def _phase(seconds: float, watts: float, idle_w: float) -> PhaseCost:
    """Busy time and the energy it adds above idle."""
    return PhaseCost(seconds, max(watts - idle_w, 0.0) * seconds)


def train_cost(p: DeviceProfile, forward_flops: float, samples: int) -> PhaseCost:
    return _phase(TRAIN_FACTOR * forward_flops * samples / p.train_flops, p.train_w, p.idle_w)


def coarse_cost(p: DeviceProfile, block_flops: float, samples: float) -> PhaseCost:
    return _phase(block_flops * samples / p.select_flops, p.select_w, p.idle_w)


def fine_cost(p: DeviceProfile, forward_flops: float, candidates: int) -> PhaseCost:
    return _phase(forward_flops * candidates / p.select_flops, p.select_w, p.idle_w)


def comm_cost(p: DeviceProfile, bytes_down: float, bytes_up: float) -> PhaseCost:
    seconds = bytes_down / p.downlink_bytes_per_s + bytes_up / p.uplink_bytes_per_s
    return PhaseCost(seconds, p.radio_w * seconds)


def sync_cost(model_bytes: float) -> float:
    return model_bytes / SYNC_BYTES_PER_S


def step_time(train_s: float, select_s: float, sync_s: float, pipelined: bool) -> float:
    """Wall time of one streaming step."""
    return max(train_s, select_s) + sync_s if pipelined else train_s + select_s


def streaming_round(
    p: DeviceProfile, *, forward_flops: float, block_flops: float, steps: int, batch_size: int,
    velocity: int, candidates: int, model_bytes: float, pipelined: bool, coarse: bool = True,
    gradient_selection: bool = True, extra_select_flops: float = 0.0, coarse_samples: float | None = None,
) -> RoundCost:
    """A streaming round: ``steps`` x (stream v -> select -> train B), plus model exchange.

    ``coarse`` adds the coarse filter over ``coarse_samples`` per step (default ``velocity``;
    Titan re-scoring its kept candidates passes what it ran); ``gradient_selection`` adds a
    forward over the ``candidates`` (C-IS/IS/loss-based selectors; random selection has none);
    ``extra_select_flops`` adds arithmetic per step outside the model (e.g. Camel's input distances).
    """
    tr = train_cost(p, forward_flops, batch_size)
    sel_s, sel_e = 0.0, 0.0
    if coarse:
        c = coarse_cost(p, block_flops, velocity if coarse_samples is None else coarse_samples)
        sel_s, sel_e = sel_s + c.time_s, sel_e + c.energy_j
    if gradient_selection:
        f = fine_cost(p, forward_flops, candidates)
        sel_s, sel_e = sel_s + f.time_s, sel_e + f.energy_j
    if extra_select_flops:
        a = fine_cost(p, extra_select_flops, 1)
        sel_s, sel_e = sel_s + a.time_s, sel_e + a.energy_j
    sync_s = sync_cost(model_bytes) if pipelined else 0.0
    per_step = step_time(tr.time_s, sel_s, sync_s, pipelined)
    compute_s = steps * per_step
    comm = comm_cost(p, model_bytes, model_bytes)
    wall = compute_s + comm.time_s
    energy = p.idle_w * wall + steps * (tr.energy_j + sel_e) + comm.energy_j
    return RoundCost(wall, energy, {
        "train": PhaseCost(steps * tr.time_s, steps * tr.energy_j),
        "select": PhaseCost(steps * sel_s, steps * sel_e),
        "sync": PhaseCost(steps * sync_s, 0.0),
        "comm": comm,
        "idle": PhaseCost(wall, p.idle_w * wall),
    })


def auto_buffer_size(p: DeviceProfile, *, forward_flops: float, block_flops: float, batch_size: int, velocity: int,
                     buffer_max: int) -> int:
    """Titan's adaptive candidate set (Sec. 3.4, Appendix B): as many candidates as the
    selecting unit, at its current idle share, can score while the training unit runs one
    step. In that time it runs the coarse filter over the v new samples and the K kept ones
    (``block_flops`` each) and the fine stage's forward over the K candidates
    (``forward_flops`` each): ``K = floor((t_train * select_flops - block * v) / (block + fwd))``,
    never below B and at most ``buffer_max``."""
    t_train = train_cost(p, forward_flops, batch_size).time_s
    k = math.floor((t_train * p.select_flops - block_flops * velocity) / (block_flops + forward_flops))
    return int(min(max(k, batch_size), buffer_max))


def static_round(
    p: DeviceProfile, *, forward_flops: float, train_samples: int, warmup_samples: int = 0,
    model_bytes: float,
) -> RoundCost:
    """A static (pruned) round: optional warm-up samples + training samples, plus exchange."""
    warm = train_cost(p, forward_flops, warmup_samples)
    tr = train_cost(p, forward_flops, train_samples)
    comm = comm_cost(p, model_bytes, model_bytes)
    wall = warm.time_s + tr.time_s + comm.time_s
    energy = p.idle_w * wall + warm.energy_j + tr.energy_j + comm.energy_j
    return RoundCost(wall, energy, {"warmup": warm, "train": tr, "comm": comm,
                                    "idle": PhaseCost(wall, p.idle_w * wall)})
