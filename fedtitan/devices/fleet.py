"""Fleets: which device each client is, as a pure function of (spec, seed, partition_id)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from fedtitan.devices.catalog import DeviceProfile, get_profile, load_profiles
from fedtitan.errors import ConfigError

if TYPE_CHECKING:
    from fedtitan.config import Config


@dataclass(frozen=True)
class FleetSpec:
    """``mix`` maps device names to fractions (normalised), or ``devices`` lists one name per
    client (cycled if shorter). ``variation`` is the sd of the per-unit lognormal factor
    applied to throughputs and powers, so no two units are identical."""

    size: int
    mix: tuple[tuple[str, float], ...] = ()
    devices: tuple[str, ...] = ()
    variation: float = 0.05

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"fleet size must be >= 1, got {self.size}")
        if bool(self.mix) == bool(self.devices):
            raise ConfigError("a fleet needs exactly one of: a mix {name: fraction} or a device list")
        for name, frac in self.mix:
            if not frac > 0:
                raise ConfigError(f"fleet mix fraction for {name!r} must be > 0, got {frac}")
        if not 0 <= self.variation < 1:
            raise ConfigError(f"fleet variation must be in [0, 1), got {self.variation}")

    @classmethod
    def from_mix(cls, mix: dict[str, float], size: int, variation: float = 0.05) -> FleetSpec:
        return cls(size=size, mix=tuple(sorted(mix.items())), variation=variation)


def fleet_spec(cfg: Config) -> FleetSpec:
    """The fleet a run config describes (``fleet.devices`` or ``fleet.mix`` over ``data.num_clients``)."""
    f = cfg.fleet
    if f.devices:
        return FleetSpec(size=cfg.data.num_clients, devices=tuple(f.devices), variation=f.variation)
    return FleetSpec.from_mix(f.mix, size=cfg.data.num_clients, variation=f.variation)


def fleet_profiles(cfg: Config) -> dict[str, DeviceProfile]:
    """The profiles ``fleet.profiles`` adds to the catalog (none when unset)."""
    return load_profiles(cfg.fleet.profiles) if cfg.fleet.profiles else {}


def fleet_devices(cfg: Config, extra: dict[str, DeviceProfile] | None = None) -> list[str]:
    """The device name of every client of the run ``cfg`` describes (one per partition id),
    each checked against the catalog and ``fleet.profiles`` (``extra``: those profiles, when
    the caller has them already). The one place a run's device list is made."""
    return device_names(fleet_spec(cfg), cfg.run.seed, fleet_profiles(cfg) if extra is None else extra)


def device_names(spec: FleetSpec, seed: int, extra: dict[str, DeviceProfile] | None = None) -> list[str]:
    """The device name of every client: exact counts by largest remainder, seeded order."""
    names = list(_names(spec, seed))
    for n in set(names):
        get_profile(n, extra)  # validate early, with a did-you-mean
    return names


@functools.lru_cache(maxsize=16)
def _names(spec: FleetSpec, seed: int) -> tuple[str, ...]:
    """:func:`device_names`, computed once per fleet: a client's device is looked up every
    round, and a fleet may hold 100,000 clients."""
    if spec.devices:
        names = [spec.devices[i % len(spec.devices)] for i in range(spec.size)]
    else:
        keys = [k for k, _ in spec.mix]
        w = np.array([v for _, v in spec.mix], dtype=np.float64)
        share = w / w.sum() * spec.size
        counts = np.floor(share).astype(int)
        order = np.lexsort((np.arange(len(keys)), -(share - counts)))
        counts[order[: spec.size - counts.sum()]] += 1
        names = [k for k, c in zip(keys, counts, strict=True) for _ in range(c)]
        perm = np.random.default_rng([seed, 0xF1EE7]).permutation(spec.size)
        names = [names[i] for i in perm]
    return tuple(names)


def device_for(spec: FleetSpec, seed: int, partition_id: int,
               extra: dict[str, DeviceProfile] | None = None) -> DeviceProfile:
    """The device of client ``partition_id``: its kind plus seeded per-unit variation."""
    if not 0 <= partition_id < spec.size:
        raise ConfigError(f"partition_id {partition_id} is outside the fleet of {spec.size}")
    base = get_profile(_names(spec, seed)[partition_id], extra)
    if spec.variation == 0:
        return base
    rng = np.random.default_rng([seed, partition_id, 0xDE71CE])
    speed, power = np.exp(rng.normal(0.0, spec.variation, size=2))
    return replace(
        base,
        train_flops=base.train_flops * speed,
        select_flops=base.select_flops * speed,
        train_w=base.idle_w + (base.train_w - base.idle_w) * power,
        select_w=base.idle_w + (base.select_w - base.idle_w) * power,
    )
