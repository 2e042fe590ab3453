"""Who the server talks to, and how a batch of messages gets to them and back.

:class:`Dispatch` knows the connected clients (real SuperNodes with a partition each, or a
pool of simulation workers that play any partition), deals messages to them, sends the work of
a client whose process died once more, and turns replies into :class:`ClientResult`\\ s. It
holds no round logic: the synchronous round and an event-driven loop both send through it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Any, NamedTuple, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.serverapp import Grid

from clients.object_store import ServerArrays
from clients.records import config_record, record_of
from fedtitan.status import Status
from fedtitan.wire import (
    ARRAYS_KEY,
    ARRAYS_RECORD,
    BUNDLE_KEY,
    CLIPPING_NORM_KEY,
    CONFIG_RECORD,
    ERROR_RECORD,
    PARTITION_KEY,
    STATE_KEY,
    STATE_ROUND_KEY,
    member_key,
)
from strategies.fleet import ClientResult
from strategies.messages import (
    ask_partition_ids,
    metric_of,
    parse_reply,
    stored_key,
    wait_for_nodes,
    with_config,
    worker_died,
    workers_or_partitions,
)
from strategies.weights import finite_each

log = logging.getLogger("fedtitan")
WORKER_RETRIES = 4  # re-sends of a dead client process's work, 1, 2, 4 and 8 s apart
PULL_INTERVAL_S = 0.5  # between looks for replies to pushed messages, where the grid says nothing else
REPLY_WAIT_S = 0.1  # the longest wait on a reply event between two looks (a safety net: each reply wakes it)
# a grid attribute: a threading.Event set whenever a reply is stored (simulations.run.PromptDispatch sets it)
REPLIED_EVENT = "fedtitan_replied"


class Sent(NamedTuple):
    """What :meth:`Dispatch.push` sent: the messages that went out (each with the clients'
    messages it carries) and their ids on the grid."""

    outgoing: list[tuple[Message, list[Message]]]
    ids: list[str]


def wait_for_replies(grid: Grid, ids: Iterable[str], timeout: float | None, replied: threading.Event | None = None,
                     interval: float = PULL_INTERVAL_S, wait_s: float = REPLY_WAIT_S) -> list[Message]:
    """Pull the replies to the messages ``ids`` until every one is in or ``timeout`` seconds
    have passed (None: no limit). Between looks: a wait on ``replied`` (an event set on each
    stored reply) of at most ``wait_s``, or a sleep of ``interval``."""
    waiting = set(ids)
    end = None if timeout is None else time.monotonic() + timeout
    out: list[Message] = []
    while waiting:
        if replied is not None:
            replied.clear()  # before looking: a reply stored after the look wakes the wait
        got = list(grid.pull_messages(list(waiting)))
        out.extend(got)
        waiting.difference_update(m.metadata.reply_to_message_id for m in got)
        left = math.inf if end is None else end - time.monotonic()
        if not waiting or left <= 0:
            break
        if replied is not None:
            replied.wait(min(wait_s, left))
        else:
            time.sleep(min(interval, left))
    return out


class Dispatch:
    """The clients of one run on ``grid``. ``pool``: its nodes are simulation workers that
    play any partition (True), real SuperNodes with a partition each (False), or ask them (None)."""

    def __init__(self, grid: Grid, timeout_s: float, pool: bool | None = None, per_message: int = 0) -> None:
        self.grid, self.timeout_s, self.pool = grid, timeout_s, pool
        self.per_message = per_message  # clients a worker's message may carry (0: a round's share of each worker)
        self.workers: list[int] = []
        self.nodes: list[int] = []  # client ids, in partition order
        self.partition_of: dict[int, int] = {}
        self.transport: ServerArrays | None = None  # weights through Ray's object store (simulation)
        self._turn = 0  # the worker the next message goes to

    def connect(self, num_clients: int, partition_ids: dict[int, int] | None = None) -> list[int]:
        """Wait for the clients; order them by partition id, so a seed samples the same
        partitions whatever node ids Flower gave them this run. Nodes beyond the run's
        ``num_clients`` partitions (a sweep's simulation has as many as its largest run) take
        no part. ``partition_ids`` (node id -> partition id) skips asking again."""
        n = num_clients
        wait = min(self.timeout_s, 120.0)
        if self.pool is None and partition_ids is None:
            self.workers, partition_ids = workers_or_partitions(self.grid, n, wait)
            self.pool = partition_ids is None
        if self.pool:
            # every partition is a client with a stable id of its own (partition id + 1); a
            # round's messages are dealt to the workers and name their partition
            self.workers = self.workers or sorted(wait_for_nodes(self.grid, 1, wait))
            if not self.workers:
                raise RuntimeError("no simulation workers connected to the server")
            self.nodes = list(range(1, n + 1))
            self.partition_of = {vid: vid - 1 for vid in self.nodes}
        else:
            if partition_ids is None:
                partition_ids = ask_partition_ids(self.grid, n, wait)
            nodes = [node for node, pid in partition_ids.items() if 0 <= pid < n]
            if not nodes:
                raise RuntimeError("no client nodes connected to the server")
            self.nodes = sorted(nodes, key=lambda node: (partition_ids[node], node))
            self.partition_of = {node: partition_ids[node] for node in self.nodes}
        return self.nodes

    def send(self, messages: list[Message]) -> dict[int, Message]:
        """Send messages addressed to clients; client id -> its reply. With a worker pool, each
        message names its partition and goes to a worker (dealt in turn); its reply comes back
        under the client's own id, so strategies, DP wrappers and clients.csv see one stable id
        per partition."""
        outgoing = self._outgoing(messages)
        replies = list(self.grid.send_and_receive([m for m, _ in outgoing], timeout=self.timeout_s))
        return self._by_client(outgoing, replies)

    def push(self, messages: list[Message]) -> Sent:
        """Send ``messages`` and return at once; :meth:`pull` waits for their replies (an
        event-driven loop goes on meanwhile)."""
        outgoing = self._outgoing(messages)
        return Sent(outgoing, list(self.grid.push_messages([m for m, _ in outgoing])))

    def pull(self, sent: Sent) -> dict[int, Message]:
        """The replies to what :meth:`push` sent, by client id: every one that comes within the
        timeout, counted from this call (the loop may have gone on for a while since the push)."""
        replies = wait_for_replies(self.grid, sent.ids, self.timeout_s, getattr(self.grid, REPLIED_EVENT, None),
                                   getattr(self.grid, "pull_interval", PULL_INTERVAL_S))
        return self._by_client(sent.outgoing, replies)

    def _outgoing(self, messages: list[Message]) -> list[tuple[Message, list[Message]]]:
        """What goes on the grid for ``messages``: (a message, the clients' messages it carries).
        A pool's messages are bundled and dealt to its workers in turn (turns go on between
        calls, so one-client sends do not all land on the first worker)."""
        if not self.pool:
            return [(m, [m]) for m in messages]
        outgoing: list[tuple[Message, list[Message]]] = []
        for group in _groups(messages):
            size = self.per_message or math.ceil(len(group) / len(self.workers))
            for k in range(0, len(group), size):
                members = group[k:k + size]
                parts = [self.partition_of[m.metadata.dst_node_id] for m in members]
                outgoing.append((_bundle(members, parts) if len(members) > 1 else members[0], members))
        for m, members in outgoing:
            if len(members) == 1 and m is members[0]:
                client = m.metadata.dst_node_id
                with_config(m, {PARTITION_KEY: self.partition_of[client]})
                m.metadata.__dict__["_fedtitan_client"] = client
            m.metadata.dst_node_id = self.workers[self._turn % len(self.workers)]
            self._turn += 1
        return outgoing

    def _by_client(self, outgoing: list[tuple[Message, list[Message]]], replies: list[Message]) -> dict[int, Message]:
        """``replies`` (to ``outgoing``) by client id, bundles unbundled."""
        if not self.pool:
            return {r.metadata.src_node_id: r for r in replies}
        by_id = {m.metadata.message_id: (m, members) for m, members in outgoing}
        out = {}
        for r in replies:
            found = by_id.get(r.metadata.reply_to_message_id)
            if found is None:
                continue
            m, members = found
            if len(members) == 1 and m is members[0]:
                client = m.metadata.__dict__["_fedtitan_client"]
                r.metadata.__dict__["_src_node_id"] = client
                out[client] = r
            else:
                for j, member in enumerate(members):
                    out[member.metadata.dst_node_id] = _unbundled(r, j, member)
        return out

    def send_surviving(self, messages: list[Message], what: str, sent: Sent | None = None) -> dict[int, Message]:
        """:meth:`send` (or :meth:`pull` of ``sent``, what :meth:`push` sent of ``messages``);
        the work of a client whose process died (Ray restarts it) is sent once more, so a
        killed worker costs time, not a different run."""
        dst = [m.metadata.__dict__.get("_fedtitan_client", m.metadata.dst_node_id) for m in messages]
        replies = self.pull(sent) if sent is not None else self.send(messages)
        for attempt in range(WORKER_RETRIES):  # Ray restarts a dead process; until it is back, sends fail too
            died = [(node, m) for node, m in zip(dst, messages, strict=True) if (r := replies.get(node)) is not None
                    and r.has_error() and worker_died(str(r.error.reason))]
            if not died:
                break
            log.warning("%s: %d client process(es) died mid-round; sending their work again", what, len(died))
            time.sleep(2.0**attempt)
            replies.update(self.send([Message(m.content, dst_node_id=node, message_type=m.metadata.message_type,
                                              group_id=m.metadata.group_id) for node, m in died]))
        return replies

    def results(self, replies: dict[int, Message], sent: list[int], sampled: list[int],
                stored: dict[int, dict[str, np.ndarray] | None]) -> list[ClientResult]:
        """Every sampled client's result: its parsed reply (non-finite weights marked), or why
        there is none."""
        results = [parse_reply(replies[n], n, stored.get(n), check=False) if n in replies
                   else ClientResult(n, Status.FAILED, error="no reply (timeout)" if n in sent else "not sent by the strategy")
                   for n in sampled]
        trained = [res for res in results if res.arrays is not None and res.status.trained]
        for res, ok in zip(trained, finite_each([cast(dict, res.arrays) for res in trained]), strict=True):
            if not ok:
                res.status = Status.NONFINITE
        return results

    def stored_arrays(self, replies: dict[int, Message], drop_prefix: str) -> dict[int, dict[str, np.ndarray] | None]:
        """The weights the replies named in Ray's object store, by client; the entries under
        ``drop_prefix`` are then dropped there (they live on while the arrays returned here
        are referenced)."""
        if self.transport is None:
            return {}
        named = {node: key for node, r in replies.items() if (key := stored_key(r)) is not None}
        out = dict(zip(named, self.transport.fetch(list(named.values())), strict=True))
        self.transport.drop(drop_prefix)
        return out

    def ask(self, clients: list[int], content: RecordDict, message_type: str, key: str) -> dict[int, float]:
        """Client id -> metric ``key`` of each successful reply to ``content``."""
        return metric_of(self.send([Message(content, dst_node_id=c, message_type=message_type) for c in clients]), key)


# ----------------------------------------------------------------------------- bundles
_MEMBER_KEYS = (PARTITION_KEY, STATE_KEY, STATE_ROUND_KEY)  # what differs between the clients of one bundle


def _shared_config(m: Message) -> dict[str, Any] | None:
    """What ``m`` asks of its client apart from the client's own keys, when it can travel in a
    bundle: a train message with the weights inside, no other records, no client mod (DP
    clipping) and no weights in Ray's object store; else None."""
    if m.metadata.message_type != "train":
        return None
    content = m.content
    rec = content.config_records.get(CONFIG_RECORD)
    if rec is None or set(content.keys()) - {CONFIG_RECORD, ARRAYS_RECORD} or ARRAYS_RECORD not in content.array_records:
        return None
    if CLIPPING_NORM_KEY in rec or ARRAYS_KEY in rec or BUNDLE_KEY in rec:
        return None
    return {k: rec[k] for k in rec if k not in _MEMBER_KEYS}


def _groups(messages: list[Message]) -> list[list[Message]]:
    """The messages in groups that may share one message (the same weights, the same config
    apart from each client's own keys), in their order; a message that cannot is alone."""
    groups: list[tuple[Any, dict[str, Any] | None, list[Message]]] = []
    for m in messages:
        shared = _shared_config(m)
        if shared is not None:
            arrays = m.content.array_records[ARRAYS_RECORD]
            for g_arrays, g_shared, g in groups:
                if g_arrays is arrays and g_shared == shared:
                    g.append(m)
                    break
            else:
                groups.append((arrays, shared, [m]))
        else:
            groups.append((None, None, [m]))
    return [g for _, _, g in groups]


def _bundle(members: list[Message], partitions: list[int]) -> Message:
    """One train message for ``members`` (a group of :func:`_groups`) playing ``partitions``:
    their shared config and weights, and each one's last state under its index."""
    first = members[0]
    own: dict[str, Any] = {**cast(dict[str, Any], _shared_config(first)), BUNDLE_KEY: partitions}
    for j, m in enumerate(members):
        rec = m.content[CONFIG_RECORD]
        for key in (STATE_KEY, STATE_ROUND_KEY):
            if key in rec:
                own[member_key(j, key)] = rec[key]
    arrays = cast(ArrayRecord, first.content.array_records[ARRAYS_RECORD])
    return Message(RecordDict({CONFIG_RECORD: config_record(own), ARRAYS_RECORD: arrays}),
                   dst_node_id=first.metadata.dst_node_id, message_type="train", group_id=first.metadata.group_id)


def _unbundled(reply: Message, j: int, member: Message) -> Message:
    """Member ``j``'s reply, as it would have come alone: its records, or its error (the
    bundle's own when the bundle failed as a whole: a dead process, a timeout)."""
    if reply.has_error():
        return Message(Error(code=reply.error.code, reason=reply.error.reason), reply_to=member)
    prefix = member_key(j, "")
    content = reply.content
    err = record_of(content, member_key(j, ERROR_RECORD), ConfigRecord)
    if err is not None:
        return Message(Error(code=int(cast(int, err["code"])), reason=str(err["reason"])), reply_to=member)
    own = RecordDict({k[len(prefix):]: content[k] for k in content if k.startswith(prefix)})
    return Message(own, reply_to=member)
