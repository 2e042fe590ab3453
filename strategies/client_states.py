"""The clients' own state between rounds, kept by the server (simulation clients have no disk of their own).

A client that trains sends its state back with its reply; the server stores it by
(partition, round), gives it back with that partition's next train message, and keeps every
state a checkpoint on disk still refers to. Any loop (the synchronous round, an event-driven
one) hands it the replies it receives and the messages it sends.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import Message

from fedtitan.checkpoint import ClientStateStore, FileSyncer, StateError, StateFile
from fedtitan.wire import STATE_KEY, STATE_ROUND_KEY
from strategies.messages import state_of, with_config

_FILE = re.compile(r"round-(\d+)\.states")


class ClientStates:
    """Partition -> the round of its newest stored state (-1: none), and the states on disk.

    The states a round brings back go to one file, ``DIR/round-NNNNNN.states``
    (:class:`~fedtitan.checkpoint.StateFile`), fsynced in the background before the next
    checkpoint; a file goes once no partition's newest state and no checkpoint on disk refers
    to it. (Runs made before this layout kept one file a client, ``DIR/pPID/rROUND.npz``; a
    resumed one still reads those.)"""

    def __init__(self, directory: str | Path, num_clients: int, keep_checkpoints: int) -> None:
        self.dir = Path(directory)
        self.rounds = np.full(num_clients, -1, dtype=np.int64)
        self.retained: list[np.ndarray] = []  # self.rounds of the checkpoints on disk (their states stay)
        self._retained_rounds: list[set[int]] = []  # the rounds each of them refers to
        self._refs: Counter[int] = Counter()  # round -> partitions whose newest state is in its file
        self._index: dict[int, dict[int, tuple[int, int]]] = {}  # round -> partition -> where in its file
        self.keep_checkpoints = keep_checkpoints
        self.io_s = 0.0  # seconds and bytes spent storing states since reset_io
        self.io_bytes = 0
        self.syncer = FileSyncer()  # each file reaches the disk in the background, before a checkpoint
        self._made = False

    def path(self, server_round: int) -> Path:
        return self.dir / f"round-{int(server_round):06d}.states"

    def reset_io(self) -> None:
        self.io_s, self.io_bytes = 0.0, 0

    def read(self, partition_id: int, server_round: int) -> bytes:
        """The state ``partition_id`` made in ``server_round``."""
        index = self._index.get(server_round)
        path = self.path(server_round)
        if index is None:
            if not path.exists():  # a run stored before states were kept a file a round
                return ClientStateStore(self.dir).read(partition_id, server_round)
            index = self._index[server_round] = StateFile.index(path)
        return StateFile.read(path, index[partition_id])

    def attach(self, message: Message, partition_id: int) -> None:
        """Give a train message its partition's last state (if any), in its config itself:
        client mods (Flower's DP clipping) want exactly one ConfigRecord."""
        if 0 <= partition_id < len(self.rounds) and self.rounds[partition_id] >= 0:
            r = int(self.rounds[partition_id])
            with_config(message, {STATE_KEY: self.read(partition_id, r), STATE_ROUND_KEY: r})

    def keep(self, server_round: int, replies: Mapping[int, Message]) -> None:
        """Store the states the clients of ``server_round`` sent back (partition -> reply; boards
        keep theirs), in one file, and drop the files nothing refers to any more."""
        states = {pid: blob for pid, reply in replies.items() if (blob := state_of(reply)) is not None}
        if not states:
            return
        t0 = time.perf_counter()
        if not self._made:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._made = True
        path = self.path(server_round)
        self._index[server_round] = StateFile.write(path, states)
        self.syncer.add(path)
        old = self.rounds[list(states)]
        self.rounds[list(states)] = server_round
        self._refs[server_round] += len(states)
        self._refs.subtract(int(r) for r in old if r >= 0)
        self._drop({int(r) for r in old if r >= 0})
        self.io_bytes += sum(len(b) for b in states.values())
        self.io_s += time.perf_counter() - t0

    def _drop(self, rounds: set[int]) -> None:
        """Remove the files of ``rounds`` that nothing refers to any more."""
        for r in rounds:
            if self._refs[r] <= 0 and not any(r in kept for kept in self._retained_rounds):
                self._refs.pop(r, None)
                self._index.pop(r, None)
                self.path(r).unlink(missing_ok=True)

    def sync(self) -> None:
        """Every state stored so far is on disk (a checkpoint about to refer to them survives
        a power cut with them; a killed process loses none of them anyway)."""
        t0 = time.perf_counter()
        self.syncer.wait()
        self.io_s += time.perf_counter() - t0

    def retain(self) -> None:
        """A checkpoint now refers to the current states: keep them while it is on disk."""
        self.retained.append(self.rounds.copy())
        self._retained_rounds.append({r for r, n in self._refs.items() if n > 0})
        dropped: set[int] = set()
        while len(self.retained) > self.keep_checkpoints:
            self.retained.pop(0)
            dropped |= self._retained_rounds.pop(0)
        self._drop(dropped)

    def restore(self, rounds: np.ndarray, older: list[np.ndarray]) -> None:
        """Back to a checkpoint's states; ``older``: those the older checkpoints refer to.
        Files of the cut-off future (written after it) go."""
        self.rounds = np.asarray(rounds, dtype=np.int64).copy()
        self.retained = [*older, self.rounds.copy()]
        self._retained_rounds = [_referenced(r) for r in self.retained]
        held = self.rounds[self.rounds >= 0]
        values, counts = np.unique(held, return_counts=True)
        self._refs = Counter({int(v): int(n) for v, n in zip(values, counts, strict=True)})
        self._index.clear()
        if self.dir.is_dir():
            on_disk = {int(m.group(1)) for p in self.dir.iterdir() if (m := _FILE.fullmatch(p.name))}
            self._drop(on_disk)


def _referenced(rounds: np.ndarray) -> set[int]:
    return {int(r) for r in np.unique(rounds) if r >= 0}


def missing_state(directory: str | Path, rounds: np.ndarray) -> tuple[int, int] | None:
    """(partition, round) of a state ``rounds`` (a checkpoint's) refers to that is not on disk
    in ``directory``; None when all are there. A file's index is read, not its states."""
    directory, rounds = Path(directory), np.asarray(rounds, dtype=np.int64)
    held = np.flatnonzero(rounds >= 0)
    by_round = held[np.argsort(rounds[held], kind="stable")]  # partitions grouped by round, one sort
    values, starts = np.unique(rounds[by_round], return_index=True)
    for r, pids in zip(values.tolist(), np.split(by_round, starts[1:]), strict=True):
        path = directory / f"round-{r:06d}.states"
        if path.is_file():
            try:
                index = StateFile.index(path)
            except StateError:
                return int(pids[0]), r
            absent = [int(p) for p in pids if int(p) not in index]
        else:  # a run stored before states were kept a file a round
            legacy = ClientStateStore(directory)
            absent = [int(p) for p in pids if not legacy.path(int(p), r).is_file()]
        if absent:
            return absent[0], r
    return None
