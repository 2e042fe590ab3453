"""Which aggregation a run uses: ``server.strategy`` and ``[server.strategy_options]``.

``fedavg`` (the default) is fedtitan's own FedAvg (:func:`strategies.weights.fedavg`, the
reference). Every other name is a Flower Message-API strategy: one of Flower's by short
name (table below), an installed ``fedtitan.strategies`` entry point, or
``package.module:ClassName``. Its options are checked against its constructor before Ray
starts (unknown option: one line with a did-you-mean). Sampling stays fedtitan's, so the
strategy's own sampling knobs are set by fedtitan and cannot be set here.

The DP wrappers (``dp-*``) wrap another strategy named by their ``strategy`` option
(default Flower's FedAvg); options the wrapper does not take go to the wrapped strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedtitan.config import Config
from fedtitan.errors import ConfigError
from fedtitan.plugins import accepted, check_options, require_methods, resolve

FLOWER_STRATEGIES: dict[str, str] = {
    "flwr-fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
    "fedavgm": "FedAvgM",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
    "krum": "Krum",
    "multikrum": "MultiKrum",
    "bulyan": "Bulyan",
    "qfedavg": "QFedAvg",
}
DP_WRAPPERS: dict[str, str] = {
    "dp-server-fixed": "DifferentialPrivacyServerSideFixedClipping",
    "dp-server-adaptive": "DifferentialPrivacyServerSideAdaptiveClipping",
    "dp-client-fixed": "DifferentialPrivacyClientSideFixedClipping",
    "dp-client-adaptive": "DifferentialPrivacyClientSideAdaptiveClipping",
}
FEDTITAN_FEDAVG = "fedavg"
STRATEGY_NAMES = [FEDTITAN_FEDAVG, *FLOWER_STRATEGIES, *DP_WRAPPERS]

_SAMPLING = "sampling is fedtitan's (server.fraction or server.clients_per_round, server.min_clients, server.policy)"
RESERVED: dict[str, str] = {
    "fraction_train": _SAMPLING, "fraction_evaluate": _SAMPLING, "min_train_nodes": _SAMPLING,
    "min_evaluate_nodes": _SAMPLING, "min_available_nodes": _SAMPLING,
    "weighted_by_key": "fedtitan weights updates by num-examples",
    "arrayrecord_key": "fedtitan's messages use 'arrays'", "configrecord_key": "fedtitan's messages use 'config'",
    "train_metrics_aggr_fn": "a callable cannot come from a config; subclass the strategy in a plugin",
    "evaluate_metrics_aggr_fn": "a callable cannot come from a config; subclass the strategy in a plugin",
    "accountant": "an object cannot come from a config; subclass the strategy in a plugin",
    "selection_rule": "a callable cannot come from a config; subclass the strategy in a plugin",
}
STRATEGY_METHODS = ("configure_train", "aggregate_train")


def _flower(name: str) -> type:
    import flwr.serverapp.strategy as flower

    cls: type = getattr(flower, FLOWER_STRATEGIES.get(name) or DP_WRAPPERS[name])
    return cls


def strategy_class(name: str, key: str = "server.strategy") -> type | None:
    """The Flower strategy class behind ``name`` (``None`` for fedtitan's own ``fedavg``)."""
    if name == FEDTITAN_FEDAVG:
        return None
    builtins = {n: n for n in (*FLOWER_STRATEGIES, *DP_WRAPPERS)}
    found = resolve(name, key=key, group="fedtitan.strategies", builtins=builtins)
    cls = _flower(name) if name in builtins else found
    if not isinstance(cls, type):
        raise ConfigError(f"{key}: {name!r} is not a class")
    require_methods(cls, STRATEGY_METHODS, key, name, "Flower Message-API strategy")
    return cls


def _split_dp_options(cls: type, options: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(inner strategy name, wrapper options, inner options) of a DP wrapper's option table."""
    inner = str(options.get("strategy", "flwr-fedavg"))
    inner = "flwr-fedavg" if inner == FEDTITAN_FEDAVG else inner  # a wrapper wraps a Flower strategy
    own, _ = accepted(cls)
    wrapper = {k: v for k, v in options.items() if k in own and k != "strategy"}
    rest = {k: v for k, v in options.items() if k not in own}
    return inner, wrapper, rest


def defaults(cfg: Config, num_sampled: int) -> dict[str, Any]:
    """Keywords fedtitan offers every strategy that takes them: its sampling knobs set so the
    strategy sends to exactly the nodes fedtitan sampled, and values it already knows."""
    client_lr = cfg.selection.lr if cfg.regime == "streaming" else cfg.pruning.lr
    return {"fraction_train": 1.0, "min_train_nodes": 1, "min_available_nodes": 1,
            "num_sampled_clients": max(1, num_sampled), "client_learning_rate": client_lr}


def _required(cls: type, given: Mapping[str, Any], offered: Mapping[str, Any], name: str, key: str) -> None:
    import inspect

    for p in inspect.signature(cls).parameters.values():
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "strategy" \
                and p.name not in given and p.name not in offered:
            raise ConfigError(f"config {key}: {name!r} needs option {p.name!r} "
                              f"(e.g. --set {key}.{p.name}=1.0)")


def check_strategy(cfg: Config) -> None:
    """Fail before Ray starts when ``server.strategy`` or its options are wrong."""
    from strategies.fleet import FleetPolicy

    s = cfg.server
    policy = FleetPolicy(s.fraction, s.min_clients, clients_per_round=s.clients_per_round)
    build_strategy(cfg, num_sampled=policy.target(cfg.data.num_clients))


def build_strategy(cfg: Config, num_sampled: int, construct: bool = True) -> Any:
    """The configured Flower strategy object (``None`` for fedtitan's ``fedavg``)."""
    name, options, key = cfg.server.strategy, dict(cfg.server.strategy_options), "server.strategy_options"
    cls = strategy_class(name)
    if cls is None:
        if options:
            raise ConfigError(f"config {key}: fedtitan's 'fedavg' takes no options (got {', '.join(options)}); "
                              "for Flower's FedAvg use server.strategy=flwr-fedavg")
        return None
    offered = defaults(cfg, num_sampled)
    if name in DP_WRAPPERS or "strategy" in accepted(cls)[0]:
        inner_name, wrapper_opts, inner_opts = _split_dp_options(cls, options)
        inner_cls = strategy_class(inner_name, key=f"{key}.strategy")
        if inner_cls is None or inner_name in DP_WRAPPERS:
            raise ConfigError(f"config {key}.strategy: {name!r} wraps a Flower strategy, not {inner_name!r}")
        check_options(cls, wrapper_opts, key, name, RESERVED)
        check_options(inner_cls, inner_opts, key, f"{name} (wrapping {inner_name})", RESERVED)
        _required(cls, wrapper_opts, offered, name, key)
        _required(inner_cls, inner_opts, offered, inner_name, key)
        if not construct:
            return None
        inner = _construct(inner_cls, offered, inner_opts, inner_name, key)
        return _construct(cls, offered, {"strategy": inner, **wrapper_opts}, name, key)
    check_options(cls, options, key, name, RESERVED)
    _required(cls, options, offered, name, key)
    return _construct(cls, offered, options, name, key) if construct else None


def _construct(cls: type, offered: Mapping[str, Any], given: Mapping[str, Any], name: str, key: str) -> Any:
    names, var_kw = accepted(cls)
    kw = {k: v for k, v in offered.items() if var_kw or k in names}
    kw.update(given)
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {key}: {name!r} refused its options: {exc}") from None


__all__ = ["DP_WRAPPERS", "FLOWER_STRATEGIES", "STRATEGY_NAMES", "build_strategy", "check_strategy", "strategy_class"]
