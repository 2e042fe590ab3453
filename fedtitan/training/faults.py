"""Injected faults (config ``faults``), for testing how the server copes: seeded per
(seed, round, partition), so a run is reproducible whatever order clients run in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedtitan.config import FaultSection
from fedtitan.seeding import keyed_rng


class InjectedFault(RuntimeError):
    """Raised by a client when config ``faults.exception`` asks for it (for testing)."""


class InjectedDrop(RuntimeError):
    """A client that drops out mid-round (``faults.drop``): it trains, then never replies."""


@dataclass(frozen=True)
class FaultPlan:
    """Which faults strike one client round."""

    exception: bool = False
    nan: bool = False
    slow: bool = False
    drop: bool = False
    scale: bool = False

    @classmethod
    def draw(cls, faults: FaultSection, seed: int, server_round: int, partition_id: int) -> FaultPlan:
        if not (faults.exception or faults.nan or faults.slow or faults.drop or faults.scale):
            return cls()  # none can strike (the draws are the client round's own: skipping them changes nothing)
        rng = keyed_rng(seed, server_round, partition_id, 0xFA17)
        d = rng.random(4)  # (the first four draws predate faults.scale: unchanged)
        scale = rng.random()
        return cls(bool(d[0] < faults.exception), bool(d[1] < faults.nan), bool(d[2] < faults.slow),
                   bool(d[3] < faults.drop), bool(scale < faults.scale))

    def corrupt(self, new: dict[str, torch.Tensor], start: dict[str, torch.Tensor], factor: float) -> None:
        """Apply ``scale`` (send start + factor x update) and ``nan`` to the outgoing weights, in place."""
        if self.scale:
            for k, v in new.items():
                if v.is_floating_point():
                    v.copy_(start[k].to(v) + factor * (v - start[k].to(v)))
        if self.nan:
            for v in new.values():
                if v.is_floating_point():
                    v.fill_(math.nan)
                    break
