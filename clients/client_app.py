"""fedtitan's Flower ClientApp (Message API).

The run config travels in every train/evaluate message (``config`` key of the ConfigRecord),
so simulated clients and real SuperNodes need nothing but their node config:
``partition-id``, ``num-partitions`` and optionally ``device`` (catalog name or profile TOML)
and ``meter`` (``simulated`` or ``measured``). Datasets and models are cached per process.

The client's persistent state (stream position, selector buffer, pruning subset, battery) is
data that fedtitan owns (:mod:`fedtitan.checkpoint`, no pickle). Without a state folder it
travels with the work: the train message brings the partition's last state
(``fedtitan-state`` bytes in its config) and the reply carries the new one (a
``fedtitan-state`` ConfigRecord: ``npz`` bytes and the ``round``), so the server keeps it in
the run folder and its checkpoints. With ``state-dir`` in the node config (``fedtitan
supernode --state-dir``) it stays on this machine's disk instead, one folder per run, each
state tagged with the round that made it; a node that restarts continues from the newest
state made before the round it is asked to train. A simulation worker plays whichever
partition a message names (``partition-id`` in its config). In a Ray simulation the model
weights are not in the messages: the train message names the round's global weights in
Ray's object store and the reply names the client's new ones (:mod:`clients.object_store`).
"""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod

from clients import object_store
from clients.object_store import ARRAYS_KEY
from fedtitan.checkpoint import ClientStateStore, pack, unpack
from fedtitan.compute import torch_threads
from fedtitan.config import Config
from fedtitan.training.client import client_evaluate, client_round

# A client's state travels as npz bytes: in the train message under this key of its config
# (with "fedtitan-state-round"), in the reply as a ConfigRecord {"npz": bytes, "round": int}.
STATE_RECORD = "fedtitan-state"

app = ClientApp()


@functools.lru_cache(maxsize=8)
def _parse(config_json: str) -> Config:
    return Config.from_json(config_json)


def _config(msg: Message) -> tuple[Config, ConfigRecord]:
    rec = msg.content["config"]
    assert isinstance(rec, ConfigRecord)
    return _parse(str(rec["config"])), rec


def local_store(context: Context, cfg: Config, token: str) -> ClientStateStore | None:
    """This node's own state folder for the run ``token`` names (``state-dir`` in the node
    config), keeping as many rounds as a server resuming from its previous checkpoint needs."""
    root = context.node_config.get("state-dir")
    if not root:
        return None
    keep = max(2, cfg.run.checkpoint_every + 1)
    return ClientStateStore(Path(str(root)).expanduser() / (token or "no-token"), keep=keep)


def load_state(msg: Message, store: ClientStateStore | None, partition_id: int, server_round: int) -> dict[str, Any]:
    """The state this round starts from: the newest one the node made before ``server_round``
    (a node with a state folder), else the one the server sent (none on a first round)."""
    if store is not None:
        found = store.get(partition_id, before=server_round)
        return dict(found[1]) if found else {}
    rec = msg.content["config"]
    assert isinstance(rec, ConfigRecord)
    if STATE_RECORD not in rec:
        return {}
    return dict(unpack(cast(bytes, rec[STATE_RECORD]), f"the client state sent for partition {partition_id}"))


def _global_weights(msg: Message) -> dict[str, Any]:
    """The round's global weights: in the message, or named by it in Ray's object store."""
    arrays = msg.content.array_records.get("arrays")
    if arrays is not None:
        return arrays.to_torch_state_dict()
    rec = msg.content["config"]
    assert isinstance(rec, ConfigRecord)
    if ARRAYS_KEY not in rec:
        raise ValueError("the train message carries no model weights (no 'arrays' record)")
    return object_store.global_weights(str(rec[ARRAYS_KEY]))


def _with_weights_inside(msg: Message) -> None:
    """Put the weights a message names into the message itself (for Flower's clipping mod,
    which reads them there)."""
    rec = msg.content["config"]
    assert isinstance(rec, ConfigRecord)
    if "arrays" not in msg.content.array_records and ARRAYS_KEY in rec:
        msg.content["arrays"] = ArrayRecord(_global_weights(msg))


def _node(context: Context) -> tuple[int, str | None, str | None]:
    nc = context.node_config
    device = nc.get("device")
    meter = nc.get("meter")
    return int(nc["partition-id"]), (str(device) if device else None), (str(meter) if meter else None)


# The key Flower's client-side DP wrappers put in the train config (flwr.supercore's
# KEY_CLIPPING_NORM; spelled out here since Flower moves its internal modules between releases).
KEY_CLIPPING_NORM = "clipping_norm"
# Keys of the train config that are fedtitan's own; everything else came from the strategy.
PARTITION_KEY = "partition-id"
_OWN_KEYS = ("config", "server-round", "run-token", "round-start-s", PARTITION_KEY, STATE_RECORD,
             f"{STATE_RECORD}-round", ARRAYS_KEY)


# Tests only: "ROUND:PARTITION:MARKER" SIGKILLs the process training that partition in that
# round, once (it creates the file MARKER first): a Ray worker killed mid-round, as the
# out-of-memory killer does.
KILL_ENV = "FEDTITAN_TEST_KILL_CLIENT"


def _test_kill(server_round: object, partition_id: int) -> None:
    rnd, _, rest = os.environ.get(KILL_ENV, "").partition(":")
    pid, _, marker = rest.partition(":")
    if rnd == str(server_round) and pid == str(partition_id) and marker and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _partition(rec: ConfigRecord, context: Context) -> int:
    """The partition this message is for: the one it names (a simulation worker plays any
    partition), else the node's own (a real SuperNode: one board, one partition)."""
    return int(cast(int, rec[PARTITION_KEY])) if PARTITION_KEY in rec else int(context.node_config["partition-id"])


def _threads(cfg: Config, rec: ConfigRecord) -> int | None:
    """A simulated client's torch threads under ``run.deterministic``: ``simulation.num_cpus``
    (rounded down, at least 1), what Ray gives each client process, so the local engine (clients
    in the server's process, with all its threads) computes what Ray does, bit for bit. Real
    SuperNodes (the message names no partition) and runs without the flag keep their threads."""
    if not cfg.run.deterministic or PARTITION_KEY not in rec:
        return None
    return max(1, int(cfg.simulation.num_cpus))


def _train(msg: Message, context: Context) -> Message:
    cfg, rec = _config(msg)
    _, device, meter = _node(context)
    pid = _partition(rec, context)
    if KILL_ENV in os.environ:
        _test_kill(rec["server-round"], pid)
    strategy_config = {k: v for k, v in rec.items() if k not in _OWN_KEYS}
    token = str(rec.get("run-token", ""))
    server_round = int(cast(int, rec["server-round"]))
    store = local_store(context, cfg, token)
    with torch_threads(_threads(cfg, rec)):
        out = client_round(cfg, pid, _global_weights(msg), load_state(msg, store, pid, server_round), server_round,
                           device=device, meter=meter, strategy_config=strategy_config,
                           round_start_s=float(cast(float, rec.get("round-start-s", 0.0))))
    metrics = MetricRecord(cast(dict[str, Any], out.metrics))
    if "arrays" in msg.content.array_records or ARRAYS_KEY not in rec:  # the weights go back as they came
        content = RecordDict({"arrays": ArrayRecord(out.state_dict), "metrics": metrics})
    else:
        key = object_store.put_weights(f"{token}/{server_round}", out.state_dict)
        content = RecordDict({"metrics": metrics, ARRAYS_KEY: ConfigRecord({"key": key})})
    if store is not None:
        store.put(pid, server_round, out.state)
    else:
        content[STATE_RECORD] = ConfigRecord({"npz": pack(out.state), "round": server_round})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A round of local training. A client-side DP wrapper on the server sends a clipping
    norm: the update is then clipped here (Flower's adaptive clipping mod, which also
    reports whether it clipped, as the adaptive wrapper needs)."""
    rec = msg.content["config"]
    assert isinstance(rec, ConfigRecord)
    if KEY_CLIPPING_NORM in rec:
        _with_weights_inside(msg)
        return adaptiveclipping_mod(msg, context, _train)
    return _train(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's partition id (so the server can sample partitions reproducibly: Flower's
    node ids differ from run to run) and how many partitions its node config names (fewer
    than the run's clients: it is a simulation worker that plays any partition)."""
    pid, _, _ = _node(context)
    num = int(cast(int, context.node_config.get("num-partitions", -1)))
    return Message(content=RecordDict({"metrics": MetricRecord({"partition_id": pid, "num_partitions": num})}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, rec = _config(msg)
    pid = _partition(rec, context)
    with torch_threads(_threads(cfg, rec)):
        metrics = client_evaluate(cfg, pid, _global_weights(msg))
    return Message(content=RecordDict({"metrics": MetricRecord(cast(dict[str, Any], metrics))}), reply_to=msg)
