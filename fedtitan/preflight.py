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

from fedtitan.config import Config, warn_once
from fedtitan.errors import ConfigError, did_you_mean


def _choose(key: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"config {key}: unknown value {value!r}{did_you_mean(value, allowed)} "
                          f"Allowed: {', '.join(allowed)}")


# The selection settings a selector reads only if its constructor takes them (velocity,
# batch_size and the learning rate are the stream's and the optimizer's, read for every one).
SELECTOR_KNOBS = ("buffer_size", "buffer_max", "n_blocks", "pool", "weighting", "coarse", "metric", "carry_over",
                  "stratify")


def _flag_unread_selection(cfg: Config, factory: object) -> None:
    """One warning line per selection setting the user typed (not a preset's) that the chosen
    selector does not take (``selection.coarse`` with random selection, say): runs differing
    only in it are identical."""
    from fedtitan.config import SelectionSection
    from fedtitan.plugins import accepted

    names, var_kw = accepted(factory)  # type: ignore[arg-type]
    if var_kw:
        return
    default, sel = SelectionSection(), cfg.selection
    unread = [k for k in SELECTOR_KNOBS if k not in names and f"selection.{k}" in cfg.explicit
              and getattr(sel, k) != getattr(default, k)]
    for key in unread:
        warn_once(f"config selection.{key}: {getattr(sel, key)!r} has no effect with selection.method = "
                  f"{cfg.selection.method!r} (its selector does not take {key})")


def check_config(cfg: Config) -> Config:
    """``cfg`` when every name it gives exists (else a one-line :class:`ConfigError`)."""
    from fedtitan.data.formats import FORMATS
    from fedtitan.data.loaders import LOADERS
    from fedtitan.devices.catalog import CATALOG
    from fedtitan.devices.dynamics import build_dynamics
    from fedtitan.devices.fleet import fleet_devices, fleet_profiles
    from fedtitan.models import MODELS, check_model_options, takes_stem
    from fedtitan.plugins import check_options
    from fedtitan.results.tracking import check_backend
    from fedtitan.selection.selectors import selector_factory

    _choose("data.dataset", cfg.data.dataset, [*LOADERS, "npz", *FORMATS])
    if cfg.data.dataset in FORMATS and not cfg.data.path:
        raise ConfigError(f"config data.path: data.dataset = {cfg.data.dataset!r} reads your data at data.path; set it "
                          f"to the {'folder of class folders' if cfg.data.dataset == 'folder' else 'file or folder'}")
    check_model_options(cfg.model.name, cfg.model.options)  # resolves model.name (zoo, entry point, module:factory)
    if cfg.model.stem != "auto" and not takes_stem(cfg.model.name):
        raise ConfigError(f"config model.stem: {cfg.model.name} has one stem; model.stem applies to "
                          f"{', '.join(n for n in MODELS if takes_stem(n))}"
                          + ("" if cfg.model.name in MODELS else "; a plugin model takes its own in model.options"))
    if cfg.model.width is not None and cfg.model.name not in MODELS:
        raise ConfigError(f"config model.width: applies to the zoo's models; a plugin model ({cfg.model.name}) "
                          f"takes its own options in model.options")
    parts = {k: getattr(cfg.model, k) for k in ("head_module", "embedding_module", "first_block_module")}
    for key, value in parts.items():
        if value is not None and cfg.model.name in MODELS:
            raise ConfigError(f"config model.{key}: {cfg.model.name!r} is a zoo model, whose parts are known; "
                              f"model.{key} is for a plugin model (package.module:factory)")
    factory = selector_factory(cfg.selection.method)
    check_options(factory, cfg.selection.options, "selection.options", cfg.selection.method)
    if cfg.pruning.method == "none":
        _flag_unread_selection(cfg, factory)
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
