"""A Flower strategy's state as data, for checkpoints: FedAdam/FedYogi/FedAdagrad moments, FedAvgM
momentum, an adaptive DP clipping norm, and a plugin's own state.

The protocol, for a plugin strategy (docs/extending.md)::

    def state_dict(self) -> dict[str, Any]: ...          # numbers, strings, lists, dicts, numpy arrays
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

A strategy without it (Flower's own have none) is saved by its *data attributes*: every
instance attribute holding a number, string, None, numpy array, ``ArrayRecord`` or a list /
dict of those (``current_arrays``, ``m_t``, ``v_t``, ``momentum_vector``, ``clipping_norm``,
...), recursing into a wrapped ``strategy`` (the DP wrappers). Attributes of any other type
(callables, accountants, ...) are configuration fedtitan rebuilds from the config; a plugin
that keeps state in such an attribute must implement the protocol, and :func:`unsaved`
names those attributes so the run can say so once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

log = logging.getLogger("fedtitan")

_ARRAYRECORD = "__arrayrecord__"
_SKIP = frozenset({"strategy"})  # a wrapped strategy: saved on its own


def _data(value: Any) -> tuple[bool, Any]:
    """(is data, the value as plain data)."""
    if value is None or isinstance(value, bool | int | float | str | np.ndarray | np.generic):
        return True, value
    if isinstance(value, ArrayRecord):
        return True, {_ARRAYRECORD: {k: np.asarray(v.numpy()) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        items = [_data(v) for v in value]
        return all(ok for ok, _ in items), type(value)(v for _, v in items)
    if isinstance(value, dict) and all(isinstance(k, str | int) for k in value):
        pairs = {k: _data(v) for k, v in value.items()}
        return all(ok for ok, _ in pairs.values()), {k: v for k, (_, v) in pairs.items()}
    return False, None


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {_ARRAYRECORD}:
        import torch

        return ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in value[_ARRAYRECORD].items()})
    if isinstance(value, list):
        return [_restore(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_restore(v) for v in value)
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    return value


def _attributes(strategy: Any) -> tuple[dict[str, Any], list[str]]:
    saved, skipped = {}, []
    for name, value in vars(strategy).items():
        if name in _SKIP:
            continue
        ok, data = _data(value)
        if ok:
            saved[name] = data
        elif not callable(value):
            skipped.append(name)
    return saved, skipped


def has_protocol(strategy: Any) -> bool:
    return callable(getattr(strategy, "state_dict", None)) and callable(getattr(strategy, "load_state_dict", None))


def strategy_state(strategy: Any) -> dict[str, Any]:
    """The strategy's state as data (see the module docstring)."""
    if strategy is None:
        return {}
    if has_protocol(strategy):
        return {"protocol": strategy.state_dict()}
    saved, _ = _attributes(strategy)
    out: dict[str, Any] = {"attributes": saved}
    inner = getattr(strategy, "strategy", None)
    if inner is not None and not isinstance(inner, str | int | float):
        out["inner"] = strategy_state(inner)
    return out


def load_strategy_state(strategy: Any, state: Mapping[str, Any]) -> None:
    """Put a state from :func:`strategy_state` back into a freshly built strategy."""
    if strategy is None or not state:
        return
    if "protocol" in state:
        strategy.load_state_dict(dict(state["protocol"]))
        return
    for name, value in dict(state.get("attributes", {})).items():
        setattr(strategy, name, _restore(value))
    if "inner" in state and getattr(strategy, "strategy", None) is not None:
        load_strategy_state(strategy.strategy, state["inner"])


def unsaved(strategy: Any) -> list[str]:
    """Attributes of a strategy without the protocol that are neither data nor callables:
    state there (if any) is not in the checkpoint. Empty for Flower's strategies."""
    if strategy is None or has_protocol(strategy):
        return []
    _, skipped = _attributes(strategy)
    inner = getattr(strategy, "strategy", None)
    names = [f"{type(strategy).__name__}.{n}" for n in skipped]
    return names + (unsaved(inner) if inner is not None and not isinstance(inner, str | int | float) else [])


__all__ = ["has_protocol", "load_strategy_state", "strategy_state", "unsaved"]
