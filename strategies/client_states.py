"""The clients' own state between rounds, kept by the server (simulation clients have no disk of their own).

A client that trains sends its state back with its reply; the server stores it by
(partition, round), gives it back with that partition's next train message, and keeps every
state a checkpoint on disk still refers to. Any loop (the synchronous round, an event-driven
one) hands it the replies it receives and the messages it sends.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Message

from fedtitan.checkpoint import ClientStateStore, FileSyncer
from fedtitan.wire import STATE_KEY, STATE_ROUND_KEY
from strategies.messages import state_of, with_config


class ClientStates:
    """Partition -> the round of its newest stored state (-1: none), and the store itself."""

    def __init__(self, directory: str | Path, num_clients: int, keep_checkpoints: int) -> None:
        self.store = ClientStateStore(directory, keep=1)
        self.rounds = np.full(num_clients, -1, dtype=np.int64)
        self.retained: list[np.ndarray] = []  # self.rounds of the checkpoints on disk (their states stay)
        self.keep_checkpoints = keep_checkpoints
        self.io_s = 0.0  # seconds and bytes spent storing states since reset_io
        self.io_bytes = 0
        self.syncer = FileSyncer()  # each state reaches the disk in the background, before a checkpoint

    def reset_io(self) -> None:
        self.io_s, self.io_bytes = 0.0, 0

    def attach(self, message: Message, partition_id: int) -> None:
        """Give a train message its partition's last state (if any), in its config itself:
        client mods (Flower's DP clipping) want exactly one ConfigRecord."""
        if 0 <= partition_id < len(self.rounds) and self.rounds[partition_id] >= 0:
            r = int(self.rounds[partition_id])
            with_config(message, {STATE_KEY: self.store.read(partition_id, r), STATE_ROUND_KEY: r})

    def keep(self, server_round: int, partition_id: int, reply: Message) -> None:
        """Store the state a client sent back (boards keep theirs), keeping what the
        checkpoints on disk still refer to."""
        blob = state_of(reply)
        if blob is None:
            return
        t0 = time.perf_counter()
        referenced = {int(c[partition_id]) for c in self.retained if c[partition_id] >= 0}
        self.io_bytes += self.store.put(partition_id, server_round, blob, keep_rounds=referenced, fsync=False)
        self.syncer.add(self.store.path(partition_id, server_round))
        self.io_s += time.perf_counter() - t0
        self.rounds[partition_id] = server_round

    def sync(self) -> None:
        """Every state stored so far is on disk (a checkpoint about to refer to them survives
        a power cut with them; a killed process loses none of them anyway)."""
        t0 = time.perf_counter()
        self.syncer.wait()
        self.io_s += time.perf_counter() - t0

    def retain(self) -> None:
        """A checkpoint now refers to the current states: keep them while it is on disk."""
        self.retained = [*self.retained, self.rounds.copy()][-self.keep_checkpoints:]

    def restore(self, rounds: np.ndarray, older: list[np.ndarray]) -> None:
        """Back to a checkpoint's states; ``older``: those the older checkpoints refer to."""
        self.rounds = np.asarray(rounds, dtype=np.int64).copy()
        self.retained = [*older, self.rounds.copy()]
