"""Model weights through Ray's object store in a simulation, beside Flower's messages.

In a Ray simulation every train message used to carry the global model and every reply the
client's new one (12.4 MB each way for MobileNetV1): Ray pickled each message into its object
store, Flower's engine handed it between its threads, and both ends converted it to and from
an ``ArrayRecord``; a client process sat idle for about 40 ms between two clients. Now:

* the server puts a round's global weights into Ray's object store once; each train message
  names them (``fedtitan-arrays`` in its config) instead of carrying them, and a client
  process reads them once a round;
* a client puts its new weights into the store and its reply names them (a ``fedtitan-arrays``
  ConfigRecord); the server reads every reply's weights without a copy.

``simulation.arrays = "auto"`` (the default) does this for models of 1 MiB and more; below
that, the fixed cost of the store's calls (about 2 ms per client) matches what it saves.

A small named actor (:class:`_Board`, no CPU of its own) maps names to object references, so
the references never leave Ray's own serialisation (Ray counts who holds them and frees the
weights when nobody does); it works the same on a multi-node Ray cluster. What the clients
compute is unchanged, bit for bit: the same float arrays arrive. Real SuperNodes, the local
engine and messages with a client-side DP clipping norm (Flower's clipping mod reads the
weights from the messages) keep the weights in the messages.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import numpy as np
import torch

from fedtitan.wire import ARRAYS_KEY  # train config: the round's weights' name; reply: the client's

BOARD_NAME = "fedtitan-arrays-board"


def _board_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class _Board:
        """Names -> object references (each kept in a one-item list, so Ray passes the
        reference itself rather than the object it refers to)."""

        def __init__(self) -> None:
            self._refs: dict[str, Any] = {}

        def put(self, key: str, boxed: list[Any]) -> None:
            self._refs[key] = boxed[0]

        def get(self, key: str) -> list[Any]:
            return [self._refs.get(key)]

        def take(self, keys: list[str]) -> list[Any]:
            return [self._refs.pop(k, None) for k in keys]

        def drop(self, prefix: str) -> int:
            gone = [k for k in self._refs if k.startswith(prefix)]
            for k in gone:
                del self._refs[k]
            return len(gone)

    return _Board


class ServerArrays:
    """The server's side: publish a round's global weights, fetch the replies' weights."""

    def __init__(self, board: Any) -> None:
        self.board = board
        self._held: dict[str, Any] = {}  # the published references, alive until dropped

    @classmethod
    def start(cls) -> ServerArrays | None:
        """The transport for this process's Ray simulation, or None without one (Ray not
        running here: real SuperNodes, the local engine, or Ray not yet started). The board
        lives as long as this process holds a handle: across the runs of a sweep (one
        simulation), until Ray shuts down."""
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is a dependency
            return None
        if not ray.is_initialized():
            return None
        try:
            ray.get_actor(BOARD_NAME)
            alive = "handle" in _server_board
        except ValueError:  # none in this Ray session (a new one since the last run)
            alive = False
        if not alive:  # the handle that created the board owns it: replacing it would end the board
            _server_board["handle"] = _board_class().options(name=BOARD_NAME, get_if_exists=True).remote()
        return cls(_server_board["handle"])

    def publish(self, prefix: str, arrays: dict[str, np.ndarray]) -> str:
        """Put ``arrays`` into the object store once; the name train messages carry."""
        import ray

        key = f"{prefix}/global"
        ref = ray.put({k: np.asarray(v) for k, v in arrays.items()})
        ray.get(self.board.put.remote(key, [ref]))
        self._held[key] = ref
        return key

    def fetch(self, keys: list[str]) -> list[dict[str, np.ndarray] | None]:
        """The weights the replies named (None where they are gone: their process died after
        replying). The arrays are read-only views of the object store."""
        import ray

        if not keys:
            return []
        refs = ray.get(self.board.take.remote(keys))
        present = [ref for ref in refs if ref is not None]
        try:  # one call for all of them (half the time of one call each)
            got = iter(ray.get(present))
            return [None if ref is None else next(got) for ref in refs]
        except ray.exceptions.RayError:  # one is lost: read them one by one
            pass
        out: list[dict[str, np.ndarray] | None] = []
        for ref in refs:
            try:
                out.append(None if ref is None else ray.get(ref))
            except ray.exceptions.RayError:
                out.append(None)
        return out

    def drop(self, prefix: str) -> None:
        """Forget what was published under ``prefix`` (the round is over)."""
        import ray

        ray.get(self.board.drop.remote(prefix))
        for k in [k for k in self._held if k.startswith(prefix)]:
            del self._held[k]


_server_board: dict[str, Any] = {}  # the server process's handle (keeps the board alive)


# ------------------------------------------------------------------------------ client side
_global: dict[str, Any] = {"key": None, "state": None}  # this process's copy of the round's weights
_board: dict[str, Any] = {}


def _on_board(method: str, *args: Any) -> Any:
    """Call the board (looked up once, again if the one this process knew has gone: a new
    simulation in a process Ray keeps warm)."""
    import ray

    for attempt in range(2):
        if "handle" not in _board:
            _board["handle"] = ray.get_actor(BOARD_NAME)
        try:
            return ray.get(getattr(_board["handle"], method).remote(*args))
        except ray.exceptions.RayActorError:
            _board.pop("handle", None)
            if attempt:
                raise
    return None  # pragma: no cover - the loop returns or raises


def global_weights(key: str) -> dict[str, torch.Tensor]:
    """The global weights ``key`` names, read once per process and round (a private copy:
    the object store's own buffers are shared and read-only)."""
    if _global["key"] != key:
        import ray

        [ref] = _on_board("get", key)
        if ref is None:
            raise RuntimeError(f"the global weights {key} are no longer in Ray's object store (the round ended)")
        arrays = ray.get(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            _global.update(key=key, state={k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    return dict(_global["state"])


def put_weights(prefix: str, state_dict: dict[str, torch.Tensor]) -> str:
    """Put a client's new weights into the object store; the name its reply carries."""
    import ray

    key = f"{prefix}/{uuid.uuid4().hex}"
    ref = ray.put({k: v.detach().cpu().numpy() for k, v in state_dict.items()})
    _on_board("put", key, [ref])
    return key


__all__ = ["ARRAYS_KEY", "BOARD_NAME", "ServerArrays", "global_weights", "put_weights"]
