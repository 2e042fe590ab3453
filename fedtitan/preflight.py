"""Before a run starts: every name a config gives, checked against its registry, in one line.

:func:`fedtitan.config.validate` checks a config's types, ranges and consistency and knows
no registry (the config sits at the bottom of the library). This module sits at the top,
beside :mod:`fedtitan.training`, and checks what the config *names*: the dataset, the model
(and its stem), the selector (a plugin is resolved and its options checked), the devices of
the fleet (catalog and ``fleet.profiles``), the dynamics model and its trace (read once: see
:func:`fedtitan.devices.dynamics.load_trace`), and the tracker's package. The launcher calls
:func:`check_config` once per run, before Ray starts, so a bad name fails in the caller's
process with a did-you-mean.
"""

from __future__ import annotations

from fedtitan.config import Config
from fedtitan.errors import ConfigError, did_you_mean


def _choose(key: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"config {key}: unknown value {value!r}{did_you_mean(value, allowed)} "
                          f"Allowed: {', '.join(allowed)}")


def check_config(cfg: Config) -> Config:
    """``cfg`` when every name it gives exists (else a one-line :class:`ConfigError`)."""
    from fedtitan.data.loaders import LOADERS
    from fedtitan.devices.catalog import CATALOG
    from fedtitan.devices.dynamics import build_dynamics
    from fedtitan.devices.fleet import fleet_devices, fleet_profiles
    from fedtitan.models import MODELS, takes_stem
    from fedtitan.plugins import check_options
    from fedtitan.results.tracking import check_backend
    from fedtitan.selection.selectors import selector_factory

    _choose("data.dataset", cfg.data.dataset, [*LOADERS, "npz"])
    _choose("model.name", cfg.model.name, list(MODELS))
    if cfg.model.stem != "auto" and not takes_stem(cfg.model.name):
        raise ConfigError(f"config model.stem: {cfg.model.name} has one stem; model.stem applies to "
                          f"{', '.join(n for n in MODELS if takes_stem(n))}")
    factory = selector_factory(cfg.selection.method)
    check_options(factory, cfg.selection.options, "selection.options", cfg.selection.method)
    extra = fleet_profiles(cfg)
    names = list(CATALOG) + list(extra)
    for name in cfg.fleet.mix:
        _choose("fleet.mix", name, names)
    for name in cfg.fleet.devices:
        _choose("fleet.devices", name, names)
    build_dynamics(cfg.fleet.dynamics, cfg.fleet.dynamics_options, cfg.run.seed, fleet_devices(cfg, extra),
                   cfg.fleet.trace)
    check_backend(cfg.tracking.backend, cfg.tracking.uri)
    return cfg


__all__ = ["check_config"]
