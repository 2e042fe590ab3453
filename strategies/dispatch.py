"""Who the server talks to, and how a batch of messages gets to them and back.

:class:`Dispatch` knows the connected clients (real SuperNodes with a partition each, or a
pool of simulation workers that play any partition), deals messages to them, sends the work of
a client whose process died once more, and turns replies into :class:`ClientResult`\\ s. It
holds no round logic: the synchronous round and an event-driven loop both send through it.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from clients.object_store import ServerArrays
from fedtitan.status import Status
from fedtitan.wire import PARTITION_KEY
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


class Dispatch:
    """The clients of one run on ``grid``. ``pool``: its nodes are simulation workers that
    play any partition (True), real SuperNodes with a partition each (False), or ask them (None)."""

    def __init__(self, grid: Grid, timeout_s: float, pool: bool | None = None) -> None:
        self.grid, self.timeout_s, self.pool = grid, timeout_s, pool
        self.workers: list[int] = []
        self.nodes: list[int] = []  # client ids, in partition order
        self.partition_of: dict[int, int] = {}
        self.transport: ServerArrays | None = None  # weights through Ray's object store (simulation)

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
        if not self.pool:
            return {r.metadata.src_node_id: r for r in self.grid.send_and_receive(messages, timeout=self.timeout_s)}
        clients = []
        for i, m in enumerate(messages):
            clients.append(m.metadata.dst_node_id)
            with_config(m, {PARTITION_KEY: self.partition_of[m.metadata.dst_node_id]})
            m.metadata.dst_node_id = self.workers[i % len(self.workers)]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout_s))
        by_message = {m.metadata.message_id: vid for m, vid in zip(messages, clients, strict=True)}
        out = {}
        for r in replies:
            client = by_message.get(r.metadata.reply_to_message_id)
            if client is not None:
                r.metadata.__dict__["_src_node_id"] = client
                out[client] = r
        return out

    def send_surviving(self, messages: list[Message], what: str) -> dict[int, Message]:
        """:meth:`send`; the work of a client whose process died (Ray restarts it) is sent once
        more, so a killed worker costs time, not a different run."""
        sent = [m.metadata.dst_node_id for m in messages]
        replies = self.send(messages)
        for attempt in range(WORKER_RETRIES):  # Ray restarts a dead process; until it is back, sends fail too
            died = [(node, m) for node, m in zip(sent, messages, strict=True) if (r := replies.get(node)) is not None
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
