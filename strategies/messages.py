"""The server's side of Flower's wire: helpers that build, send and read messages.

Every key the server puts in a message, or reads from a reply, is :mod:`fedtitan.wire`'s (the
one place every key is named, for the clients too); a reply's report is read with
``ClientReport.from_wire``. Nothing here keeps state between calls: the functions take a grid
or a message and give back data.
"""

from __future__ import annotations

import re
import time
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from clients.arrays import decode_arrays
from clients.records import config_record, record_of
from fedtitan.status import Status
from fedtitan.wire import (
    ARRAYS_KEY,
    ARRAYS_NAME,
    ARRAYS_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    NUM_PARTITIONS,
    PARTITION_ID,
    QUERY_KEY,
    QUERY_PARTITION,
    REPORT_RECORD,
    STATE_NPZ,
    STATE_RECORD,
    ClientReport,
)
from strategies.fleet import ClientResult
from strategies.weights import finite

# simulation.arrays = "auto": models from this size travel through Ray's object store (at
# MobileNetV1's 12 MB it saves about 40 ms per client; at the small CNN's 0.4 MB the two ways
# cost the same within noise)
OBJECT_STORE_FROM_BYTES = 2**20


def wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> list[int]:
    """The connected nodes, once there are ``n`` (or ``timeout_s`` passed)."""
    t0 = time.monotonic()
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() - t0 > timeout_s:
            return nodes
        time.sleep(0.5)


def _ask(grid: Grid, nodes: list[int], content: RecordDict, message_type: str, key: str,
         timeout_s: float) -> dict[int, float]:
    """Send ``content`` to every node; node id -> metric ``key`` of each successful reply."""
    msgs = [Message(content, dst_node_id=n, message_type=message_type) for n in nodes]
    return metric_of({r.metadata.src_node_id: r for r in grid.send_and_receive(msgs, timeout=timeout_s)}, key)


def metric_of(replies: dict[int, Message], key: str) -> dict[int, float]:
    """Sender -> metric ``key`` of each successful reply."""
    out = {}
    for sender, reply in replies.items():
        if not reply.has_error():
            rec = reply.content[METRICS_RECORD]
            assert isinstance(rec, MetricRecord)
            out[sender] = float(cast(float, rec[key]))
    return out


def _partition_query() -> RecordDict:
    return RecordDict({CONFIG_RECORD: ConfigRecord({QUERY_KEY: QUERY_PARTITION})})


def ask_partition_ids(grid: Grid, n: int, timeout_s: float) -> dict[int, int]:
    """Node id -> partition id of every connected node (waiting for at least ``n``)."""
    nodes = wait_for_nodes(grid, n, timeout_s)
    told = _ask(grid, nodes, _partition_query(), "query", PARTITION_ID, timeout_s)
    return {node: int(v) for node, v in told.items()}


def workers_or_partitions(grid: Grid, n: int, timeout_s: float) -> tuple[list[int], dict[int, int] | None]:
    """What the connected nodes are: ``(workers, None)`` when they are simulation workers that
    play any partition (their node config names fewer partitions than the run's ``n``, as
    ``flwr run``'s default federation of 2 simulated SuperNodes does), else ``([], node id ->
    partition id)`` of real SuperNodes, one partition each (waiting for ``n`` of them)."""
    first = wait_for_nodes(grid, 1, timeout_s)
    told = _ask(grid, first, _partition_query(), "query", NUM_PARTITIONS, timeout_s)
    if told and all(int(v) != n for v in told.values()):
        return sorted(told), None
    return [], ask_partition_ids(grid, n, timeout_s)


def with_config(message: Message, entries: dict[str, Any]) -> None:
    """Give ``message`` a config record of its own with ``entries`` added (a strategy may share
    one content, and one config, between all its messages)."""
    rec = message.content[CONFIG_RECORD]
    assert isinstance(rec, ConfigRecord)
    own = config_record({**{k: rec[k] for k in rec}, **entries})
    message.content = RecordDict({**{k: message.content[k] for k in message.content}, CONFIG_RECORD: own})


def worker_died(reason: str) -> bool:
    """A reply error that says the client's process died (not that the client raised)."""
    return any(s in reason for s in ("ActorDiedError", "RayActorError", "ActorUnavailableError",
                                     "actor died unexpectedly", "actor is temporarily unavailable"))


def error_gist(error: str) -> str:
    """The line of a client's error a person needs: Flower's ``Message: ...`` of the client's
    own exception when there is one (Ray wraps it in lines of actor ids), else the first line."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", error).splitlines() if ln.strip()]
    for ln in lines:
        if "Message: " in ln:  # (the engines close the reason with "'>", on the same line when it is one)
            return ln.split("Message: ", 1)[1].removesuffix("'>")[:300]
    return lines[0][:300] if lines else ""


def wants_object_store(mode: str, weights: dict[str, np.ndarray], grid: Any) -> bool:
    """Whether the weights go through Ray's object store (``simulation.arrays``): only in a
    simulation (Flower's in-memory grid), and with ``auto`` only from 1 MiB of weights."""
    if type(grid).__name__ != "InMemoryGrid" or mode == "messages":
        return False
    return mode == "object-store" or sum(np.asarray(v).nbytes for v in weights.values()) >= OBJECT_STORE_FROM_BYTES


def without_arrays(message: Message, key: str) -> None:
    """Let ``message`` name the weights published under ``key`` instead of carrying them."""
    content = {k: message.content[k] for k in message.content if k != ARRAYS_RECORD}
    message.content = RecordDict(content)
    with_config(message, {ARRAYS_KEY: key})


def stored_key(reply: Message) -> str | None:
    """The object-store key a successful reply names its new weights by (None: they travel inside)."""
    rec = None if reply.has_error() else record_of(reply.content, ARRAYS_KEY, ConfigRecord)
    if rec is None:
        return None
    return str(rec[ARRAYS_NAME])


def parse_reply(reply: Message, node_id: int, stored: dict[str, np.ndarray] | None = None,
                check: bool = True) -> ClientResult:
    """A reply (or its error) as the policy sees it; non-finite weights are marked (unless
    ``check`` is False: the caller checks). ``stored``: the weights the reply named in Ray's
    object store (None when they were lost)."""
    if reply.has_error():
        reason = str(reply.error.reason)
        dropped = "InjectedDrop" in reason or "dropped mid-round" in reason
        return ClientResult(node_id, Status.DROPPED if dropped else Status.FAILED, error=error_gist(reason))
    try:
        metrics_rec = reply.content[METRICS_RECORD]
        if not isinstance(metrics_rec, MetricRecord):
            raise ValueError(f"{METRICS_RECORD!r} is a {type(metrics_rec).__name__}, not a MetricRecord")
        report = ClientReport.from_wire(metrics_rec, record_of(reply.content, REPORT_RECORD, ConfigRecord))
    except (KeyError, ValueError) as exc:
        # a board on another version, a mod that drops a metric: this client failed, not the run
        return ClientResult(node_id, Status.FAILED, error=f"malformed report: {exc}")
    metrics = {k: float(v) for k, v in metrics_rec.items() if isinstance(v, int | float)}
    status, device = report.status, report.device
    arrays_rec = record_of(reply.content, ARRAYS_RECORD, ArrayRecord)
    arrays = None
    if record_of(reply.content, ARRAYS_KEY, ConfigRecord) is not None:
        if stored is None:
            return ClientResult(node_id, Status.FAILED, metrics, device=device,
                                error="its new weights were lost from Ray's object store (its process died)")
        arrays = stored
    elif arrays_rec is not None:
        arrays = decode_arrays(arrays_rec)
    if arrays is not None and check and status.trained and not finite(arrays):
        status = Status.NONFINITE
    return ClientResult(node_id, status, metrics, arrays, raw=reply, device=device)


def state_of(reply: Message) -> bytes | None:
    """The client state a successful reply carries back (simulation clients send theirs), if any."""
    if reply.has_error():
        return None
    rec = record_of(reply.content, STATE_RECORD, ConfigRecord)
    if rec is None or STATE_NPZ not in rec:
        return None
    return cast(bytes, rec[STATE_NPZ])
