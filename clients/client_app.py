"""fedtitan's Flower ClientApp (Message API).

The run config travels in every train/evaluate message (``config`` key of the ConfigRecord),
so simulated clients and real SuperNodes need nothing but their node config:
``partition-id``, ``num-partitions`` and optionally ``device`` (catalog name or profile TOML)
and ``meter`` (``simulated`` or ``measured``). Datasets and models are cached per process;
the client's persistent state (stream position, selector buffer, pruning subset, battery)
lives in ``Context.state``.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod

from fedtitan.config import Config
from fedtitan.training.client import client_evaluate, client_round

STATE_KEY = "fedtitan-state"

app = ClientApp()


@functools.lru_cache(maxsize=8)
def _parse(config_json: str) -> Config:
    return Config.from_json(config_json)


def _config(msg: Message) -> tuple[Config, ConfigRecord]:
    rec = msg.content["config"]
    assert isinstance(rec, ConfigRecord)
    return _parse(str(rec["config"])), rec


def _load_state(context: Context, token: str) -> dict[str, Any]:
    """This node's state for the run ``token`` names; another run's (a sweep runs many in one
    simulation, on the same nodes) is not this run's, so it starts fresh."""
    rec = context.state.config_records.get(STATE_KEY)
    if rec is None or "blob" not in rec or str(rec.get("token", "")) != token:
        return {}
    return pickle.loads(cast(bytes, rec["blob"]))  # noqa: S301 - written by this client itself


def _save_state(context: Context, state: dict[str, Any], token: str) -> None:
    context.state.config_records[STATE_KEY] = ConfigRecord({"blob": pickle.dumps(state), "token": token})


def _global_weights(msg: Message) -> dict[str, Any]:
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    return arrays.to_torch_state_dict()


def _node(context: Context) -> tuple[int, str | None, str | None]:
    nc = context.node_config
    device = nc.get("device")
    meter = nc.get("meter")
    return int(nc["partition-id"]), (str(device) if device else None), (str(meter) if meter else None)


# The key Flower's client-side DP wrappers put in the train config (flwr.supercore's
# KEY_CLIPPING_NORM; spelled out here since Flower moves its internal modules between releases).
KEY_CLIPPING_NORM = "clipping_norm"
# Keys of the train config that are fedtitan's own; everything else came from the strategy.
_OWN_KEYS = ("config", "server-round", "run-token", "round-start-s")


def _train(msg: Message, context: Context) -> Message:
    cfg, rec = _config(msg)
    pid, device, meter = _node(context)
    strategy_config = {k: v for k, v in rec.items() if k not in _OWN_KEYS}
    token = str(rec.get("run-token", ""))
    out = client_round(cfg, pid, _global_weights(msg), _load_state(context, token), int(cast(int, rec["server-round"])),
                       device=device, meter=meter, strategy_config=strategy_config,
                       round_start_s=float(cast(float, rec.get("round-start-s", 0.0))))
    _save_state(context, out.state, token)
    content = RecordDict({"arrays": ArrayRecord(out.state_dict), "metrics": MetricRecord(cast(dict[str, Any], out.metrics))})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A round of local training. A client-side DP wrapper on the server sends a clipping
    norm: the update is then clipped here (Flower's adaptive clipping mod, which also
    reports whether it clipped, as the adaptive wrapper needs)."""
    rec = msg.content["config"]
    assert isinstance(rec, ConfigRecord)
    if KEY_CLIPPING_NORM in rec:
        return adaptiveclipping_mod(msg, context, _train)
    return _train(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's partition id, so the server can sample partitions reproducibly (Flower's
    node ids differ from run to run)."""
    pid, _, _ = _node(context)
    return Message(content=RecordDict({"metrics": MetricRecord({"partition_id": pid})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, _ = _config(msg)
    pid, _, _ = _node(context)
    metrics = client_evaluate(cfg, pid, _global_weights(msg))
    return Message(content=RecordDict({"metrics": MetricRecord(cast(dict[str, Any], metrics))}), reply_to=msg)
