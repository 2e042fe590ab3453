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

Every message key is :mod:`fedtitan.wire`'s; the reply carries the client's report through its
one translation (``ClientReport.to_wire``): its numbers in the ``metrics`` MetricRecord, its
strings (the device's name) in a ``fedtitan-report`` ConfigRecord.
"""

from __future__ import annotations

import functools
import logging
import traceback
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod

from clients import object_store
from clients.arrays import decode_arrays, encode_arrays
from clients.records import config_record, metric_record, record_of
from fedtitan.checkpoint import ClientStateStore, pack, unpack
from fedtitan.compute import torch_threads
from fedtitan.config import Config
from fedtitan.training.client import client_evaluate, client_round
from fedtitan.wire import (
    ARRAYS_KEY,
    ARRAYS_NAME,
    ARRAYS_RECORD,
    BUNDLE_KEY,
    CLIENT_APP_RAISED_EXCEPTION,
    CLIPPING_NORM_KEY,
    CONFIG_RECORD,
    ERROR_RECORD,
    METRICS_RECORD,
    NODE_DEVICE,
    NODE_METER,
    NODE_NUM_PARTITIONS,
    NODE_PARTITION,
    NODE_STATE_DIR,
    NUM_PARTITIONS,
    OWN_CONFIG_KEYS,
    PARTITION_ID,
    PARTITION_KEY,
    REPORT_RECORD,
    ROUND_START_KEY,
    RUN_CONFIG_KEY,
    RUN_TOKEN_KEY,
    SCHEDULE_ROUND_KEY,
    SERVER_ROUND_KEY,
    STATE_KEY,
    STATE_NPZ,
    STATE_RECORD,
    STATE_ROUND,
    STATE_ROUND_KEY,
    member_key,
)

log = logging.getLogger("fedtitan")
app = ClientApp()


@functools.lru_cache(maxsize=8)
def _parse(config_json: str) -> Config:
    return Config.from_json(config_json)


def _config(content: RecordDict) -> tuple[Config, ConfigRecord]:
    rec = content[CONFIG_RECORD]
    assert isinstance(rec, ConfigRecord)
    return _parse(str(rec[RUN_CONFIG_KEY])), rec


def local_store(context: Context, cfg: Config, token: str) -> ClientStateStore | None:
    """This node's own state folder for the run ``token`` names (``state-dir`` in the node
    config), keeping as many rounds as a server resuming from its previous checkpoint needs."""
    root = context.node_config.get(NODE_STATE_DIR)
    if not root:
        return None
    keep = max(2, cfg.run.checkpoint_every + 1)
    return ClientStateStore(Path(str(root)).expanduser() / (token or "no-token"), keep=keep)


def load_state(content: RecordDict, store: ClientStateStore | None, partition_id: int,
               server_round: int) -> dict[str, Any]:
    """The state this round starts from: the newest one the node made before ``server_round``
    (a node with a state folder), else the one the server sent (none on a first round)."""
    if store is not None:
        found = store.get(partition_id, before=server_round)
        return dict(found[1]) if found else {}
    rec = content[CONFIG_RECORD]
    assert isinstance(rec, ConfigRecord)
    if STATE_KEY not in rec:
        return {}
    return dict(unpack(cast(bytes, rec[STATE_KEY]), f"the client state sent for partition {partition_id}"))


def _global_weights(content: RecordDict) -> dict[str, Any]:
    """The round's global weights: in the message, or named by it in Ray's object store."""
    arrays = record_of(content, ARRAYS_RECORD, ArrayRecord)
    if arrays is not None:
        return _decoded(arrays)
    rec = content[CONFIG_RECORD]
    assert isinstance(rec, ConfigRecord)
    if ARRAYS_KEY not in rec:
        raise ValueError(f"the train message carries no model weights (no {ARRAYS_RECORD!r} record)")
    return object_store.global_weights(str(rec[ARRAYS_KEY]))


_LAST_DECODED: list[Any] = [None, None]  # [the ArrayRecord, its tensors]


def _decoded(arrays: ArrayRecord) -> dict[str, Any]:
    """The record's arrays as CPU tensors. The clients of one round share the record under the
    local engine: it is decoded once a round, not once a client (the tensors are only read:
    loaded into the model, compared against)."""
    if _LAST_DECODED[0] is not arrays:
        import torch

        _LAST_DECODED[:] = [arrays, {k: torch.from_numpy(v) for k, v in decode_arrays(arrays).items()}]
    return dict(_LAST_DECODED[1])


def _with_weights_inside(msg: Message) -> None:
    """Put the weights a message names into the message itself (for Flower's clipping mod,
    which reads them there)."""
    rec = msg.content[CONFIG_RECORD]
    assert isinstance(rec, ConfigRecord)
    if record_of(msg.content, ARRAYS_RECORD, ArrayRecord) is None and ARRAYS_KEY in rec:
        msg.content[ARRAYS_RECORD] = ArrayRecord(_global_weights(msg.content))


def _node(context: Context) -> tuple[int, str | None, str | None]:
    nc = context.node_config
    device = nc.get(NODE_DEVICE)
    meter = nc.get(NODE_METER)
    return int(nc[NODE_PARTITION]), (str(device) if device else None), (str(meter) if meter else None)


def _partition(rec: ConfigRecord, context: Context) -> int:
    """The partition this message is for: the one it names (a simulation worker plays any
    partition), else the node's own (a real SuperNode: one board, one partition)."""
    return int(cast(int, rec[PARTITION_KEY])) if PARTITION_KEY in rec else int(context.node_config[NODE_PARTITION])


def _threads(cfg: Config, rec: ConfigRecord) -> int | None:
    """A simulated client's torch threads: ``simulation.num_cpus`` (rounded down, at least 1),
    the CPU share Ray gives each client process, on either engine. So the local engine (clients
    in the server's process, which has all the machine's threads) computes what Ray does, bit
    for bit under ``run.deterministic``, and a small model's many tiny ops are not split across
    threads that wait for each other at every op (measured here, a quickstart MLP's round with
    the machine's second core busy elsewhere: 0.27 s on one thread, 2.8 s on two). A model
    large enough to gain from more threads gets them with ``simulation.num_cpus``. Real
    SuperNodes (the message names no partition) keep their threads."""
    if PARTITION_KEY not in rec and BUNDLE_KEY not in rec:
        return None
    return max(1, int(cfg.simulation.num_cpus))


def _train(msg: Message, context: Context) -> Message:
    rec = msg.content[CONFIG_RECORD]
    assert isinstance(rec, ConfigRecord)
    with torch_threads(_threads(_parse(str(rec[RUN_CONFIG_KEY])), rec)):  # once for a bundle's clients
        content = _train_bundle(msg.content, rec, context) if BUNDLE_KEY in rec else _train_one(msg.content, context)
    return Message(content=content, reply_to=msg)


def _train_one(message: RecordDict, context: Context) -> RecordDict:
    """One client's round: its reply's records."""
    cfg, rec = _config(message)
    _, device, meter = _node(context)
    pid = _partition(rec, context)
    strategy_config = {k: v for k, v in rec.items() if k not in OWN_CONFIG_KEYS}  # what the strategy added
    token = str(rec.get(RUN_TOKEN_KEY, ""))
    server_round = int(cast(int, rec[SERVER_ROUND_KEY]))
    store = local_store(context, cfg, token)
    out = client_round(cfg, pid, _global_weights(message), load_state(message, store, pid, server_round),
                       server_round, device=device, meter=meter, strategy_config=strategy_config,
                       round_start_s=float(cast(float, rec.get(ROUND_START_KEY, 0.0))),
                       schedule_round=int(cast(int, rec.get(SCHEDULE_ROUND_KEY, server_round))))
    numbers, strings = out.report.to_wire()
    metrics = metric_record(numbers)
    if record_of(message, ARRAYS_RECORD, ArrayRecord) is not None or ARRAYS_KEY not in rec:  # the weights go back as they came
        content = RecordDict({ARRAYS_RECORD: encode_arrays(out.state_dict), METRICS_RECORD: metrics})
    else:
        key = object_store.put_weights(f"{token}/{server_round}", out.state_dict)
        content = RecordDict({METRICS_RECORD: metrics, ARRAYS_KEY: ConfigRecord({ARRAYS_NAME: key})})
    content[REPORT_RECORD] = config_record(strings)
    if store is not None:
        store.put(pid, server_round, out.state)
    else:
        content[STATE_RECORD] = ConfigRecord({STATE_NPZ: pack(out.state), STATE_ROUND: server_round})
    return content


def _train_bundle(message: RecordDict, rec: ConfigRecord, context: Context) -> RecordDict:
    """A bundle's clients (:mod:`fedtitan.wire`), one after another, each as if it had come
    alone: the shared config with its own partition and state. A client that raises is
    reported as Flower reports a ClientApp that raises; the others go on."""
    parts = [int(p) for p in cast(list[int], rec[BUNDLE_KEY])]
    own = {member_key(j, key) for j in range(len(parts)) for key in (STATE_KEY, STATE_ROUND_KEY)}
    shared = {k: rec[k] for k in rec if k != BUNDLE_KEY and k not in own}
    arrays = record_of(message, ARRAYS_RECORD, ArrayRecord)
    out = RecordDict()
    for j, pid in enumerate(parts):
        config = {**shared, PARTITION_KEY: pid}
        for key in (STATE_KEY, STATE_ROUND_KEY):
            if member_key(j, key) in rec:
                config[key] = rec[member_key(j, key)]
        member = RecordDict({CONFIG_RECORD: config_record(config)})
        if arrays is not None:
            member[ARRAYS_RECORD] = arrays  # the same record: decoded once for all of them
        try:
            got = _train_one(member, context)
        except Exception as exc:
            log.debug("partition %d raised in a bundle: %s", pid, traceback.format_exc())
            got = RecordDict({ERROR_RECORD: ConfigRecord({"code": CLIENT_APP_RAISED_EXCEPTION,
                                                          "reason": f"{type(exc)}:<'Message: {exc}'>"})})
        for name in got:
            out[member_key(j, name)] = got[name]
    return out


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A round of local training. A client-side DP wrapper on the server sends a clipping
    norm: the update is then clipped here (Flower's adaptive clipping mod, which also
    reports whether it clipped, as the adaptive wrapper needs)."""
    rec = msg.content[CONFIG_RECORD]
    assert isinstance(rec, ConfigRecord)
    if CLIPPING_NORM_KEY in rec:
        _with_weights_inside(msg)
        return adaptiveclipping_mod(msg, context, _train)
    return _train(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's partition id (so the server can sample partitions reproducibly: Flower's
    node ids differ from run to run) and how many partitions its node config names (fewer
    than the run's clients: it is a simulation worker that plays any partition)."""
    pid, _, _ = _node(context)
    num = int(cast(int, context.node_config.get(NODE_NUM_PARTITIONS, -1)))
    return Message(content=RecordDict({METRICS_RECORD: MetricRecord({PARTITION_ID: pid, NUM_PARTITIONS: num})}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, rec = _config(msg.content)
    pid = _partition(rec, context)
    with torch_threads(_threads(cfg, rec)):
        metrics = client_evaluate(cfg, pid, _global_weights(msg.content))
    return Message(content=RecordDict({METRICS_RECORD: MetricRecord(cast(dict[str, Any], metrics))}),
                   reply_to=msg)
