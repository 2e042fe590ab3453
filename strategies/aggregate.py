"""How the included replies become the next global model.

The fleet policy (:mod:`strategies.fleet`) decides *who* trains and whose reply counts; an
aggregator decides *how* to combine them. Both aggregators here have two steps, called in
order every round, as Flower's strategies have them:

* ``configure(server_round, arrays, config, grid, nodes)`` -> the train messages for exactly
  the sampled ``nodes``;
* ``aggregate(server_round, included, current)`` -> the new global weights (or ``None``).

:class:`FedtitanFedAvg` is fedtitan's own weighted FedAvg, the reference. :class:`FlowerAggregator`
runs any Flower Message-API strategy: it builds its messages itself, through a view of the
grid that shows it only the nodes fedtitan sampled (so FedProx's ``proximal-mu`` or a DP
wrapper's clipping norm reach the clients, and FedOpt-family state persists), and its
``aggregate_train`` sees only the replies fedtitan included.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from clients.arrays import decode_arrays, encode_arrays
from fedtitan.wire import ARRAYS_RECORD, CONFIG_RECORD, SERVER_ROUND_KEY
from strategies.fleet import ClientResult
from strategies.weights import fedavg


def to_arrays(state: dict[str, np.ndarray]) -> ArrayRecord:
    return encode_arrays(state)


class Aggregator(Protocol):
    name: str

    def configure(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                  nodes: list[int]) -> list[Message]: ...

    def aggregate(self, server_round: int, included: list[ClientResult],
                  current: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None: ...


class FedtitanFedAvg:
    """Weighted mean of the included updates by ``num-examples``, in float64 (the reference)."""

    name = "fedavg"

    def configure(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                  nodes: list[int]) -> list[Message]:
        config[SERVER_ROUND_KEY] = server_round
        content = RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: config})
        return [Message(content, dst_node_id=n, message_type="train") for n in nodes]

    def aggregate(self, server_round: int, included: list[ClientResult],
                  current: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        return fedavg(included) if included else None


class NodeView(Grid):
    """A grid that shows a strategy only ``nodes`` (those fedtitan sampled this round).

    A strategy's ``configure_train`` only asks which nodes there are; sending stays with the
    server, so every other call goes to the real grid."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid = grid
        self._nodes = list(nodes)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class AggregationFailed(RuntimeError):
    """The strategy refused the replies (e.g. inconsistent records); the round keeps the old model."""


class FlowerAggregator:
    """A Flower Message-API strategy behind fedtitan's fleet policy."""

    def __init__(self, strategy: Any, name: str) -> None:
        self.strategy = strategy
        self.name = name

    def configure(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                  nodes: list[int]) -> list[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, NodeView(grid, nodes)))
        order = {n: i for i, n in enumerate(nodes)}  # fedtitan's order, whatever order the strategy drew
        unknown = [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in order]
        if unknown:
            raise AggregationFailed(f"{self.name}: configure_train addressed nodes fedtitan did not sample: {unknown}")
        return sorted(messages, key=lambda m: order[m.metadata.dst_node_id])

    def aggregate(self, server_round: int, included: list[ClientResult],
                  current: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        if not included:
            return None
        replies = [with_arrays(r) for r in included]
        try:
            arrays, _ = self.strategy.aggregate_train(server_round, replies)
        except Exception as exc:  # Flower raises its own types (InconsistentMessageReplies, AggregationError, ...)
            raise AggregationFailed(f"{self.name}.aggregate_train: {type(exc).__name__}: {exc}") from exc
        if arrays is None:
            return None
        out = decode_arrays(arrays)
        if set(out) != set(current):
            raise AggregationFailed(f"{self.name} returned arrays {sorted(set(out) ^ set(current))} that the model "
                                    "does not have (or lacks)")
        # Flower averages integer buffers (BatchNorm's num_batches_tracked) as floats: cast back
        return {k: out[k].astype(current[k].dtype, copy=False) for k in current}


def with_arrays(result: ClientResult) -> Any:
    """The reply message of ``result`` with its weights inside (a Flower strategy reads them
    there; in a Ray simulation they came through the object store)."""
    reply = result.raw
    if isinstance(reply, Message) and result.arrays is not None and ARRAYS_RECORD not in reply.content.array_records:
        with warnings.catch_warnings():  # the object store's arrays are read-only; ArrayRecord copies them
            warnings.simplefilter("ignore", UserWarning)
            reply.content[ARRAYS_RECORD] = to_arrays(result.arrays)
    return reply


def anchor(strategy: Any, current: dict[str, np.ndarray]) -> None:
    """Point a Flower strategy's server optimiser at ``current``. Its ``configure_train`` keeps
    the weights it sent (``current_arrays``: FedOpt's family, FedAvgM, the DP wrappers) and its
    ``aggregate_train`` steps from them; an asynchronous server step comes after several
    dispatches (or none) since, so the weights it steps from are set here."""
    from flwr.serverapp.strategy.fedopt import FedOpt

    if isinstance(strategy, FedOpt):
        strategy.current_arrays = {k: np.array(v, copy=True) for k, v in current.items()}
    elif hasattr(strategy, "current_arrays"):
        strategy.current_arrays = to_arrays(current)
    inner = getattr(strategy, "strategy", None)  # a DP wrapper's wrapped strategy
    if inner is not None and inner is not strategy:
        anchor(inner, current)


def make_aggregator(strategy: Any, name: str) -> Aggregator:
    return FedtitanFedAvg() if strategy is None else FlowerAggregator(strategy, name)


__all__ = ["AggregationFailed", "Aggregator", "anchor", "FedtitanFedAvg", "FlowerAggregator", "NodeView", "make_aggregator",
           "to_arrays"]
