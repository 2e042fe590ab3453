"""``simulation.engine = "local"``: every virtual client runs in this process, one after another.

A :class:`flwr.serverapp.Grid` whose nodes are ClientApp calls in the server's own process:
no Ray, no polling, no start-up. The same ServerApp steps and the same ClientApp functions
run as under Flower's Ray engine (the messages are real Flower messages; a client that
raises comes back as an error reply, as Ray's engine sends it), so it is what a debugger,
a notebook or a test wants; for parallel clients use the default ``ray`` engine.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from fedtitan.wire import CLIENT_APP_RAISED_EXCEPTION, NODE_NUM_PARTITIONS, NODE_PARTITION

log = logging.getLogger("fedtitan")

SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID
FIRST_NODE_ID = 1001  # node ids differ from partition ids, as they do under Flower's engines


class LocalGrid(Grid):
    """``num_nodes`` virtual SuperNodes (partition ids 0..n-1) served by ``client_app`` in-process."""

    def __init__(self, client_app: Any, num_nodes: int, run_id: int = 1) -> None:
        self.client_app = client_app
        self._run_id = run_id
        self.contexts = {
            FIRST_NODE_ID + i: Context(run_id=run_id, node_id=FIRST_NODE_ID + i,
                                       node_config={NODE_PARTITION: i, NODE_NUM_PARTITIONS: num_nodes},
                                       state=RecordDict(), run_config={})
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        # what Flower's runtimes set before a ServerApp runs: the server's messages are built from it
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _handle(self, msg: Message) -> Message:
        context = self.contexts[msg.metadata.dst_node_id]
        try:
            reply = self.client_app(msg, context)
        except Exception as exc:  # reported as Flower's engines report it: an error reply
            log.debug("client %s raised: %s", msg.metadata.dst_node_id, traceback.format_exc())
            reason = f"{type(exc)}:<'Message: {exc}'>"
            reply = Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = self._run_id
            if msg.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no node {msg.metadata.dst_node_id} in this local simulation")
            self._replies[msg.metadata.message_id] = self._handle(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))


__all__ = ["LocalGrid"]
