"""Run state as data: a pickle-free format, the client-state store, and per-round checkpoints.

Everything a run needs to go on after its process dies is written here as *data*, never as
code: a nested value (dicts, lists, numbers, strings, numpy arrays, torch tensors) is packed
into one ``.npz`` file whose ``__tree__`` entry is JSON describing the structure and whose
other entries are the arrays. Loading uses ``numpy.load(allow_pickle=False)``, so a shared
results folder can never run anyone's code.

A value that holds no array (a stream's position, a battery level) is written as that JSON
alone behind a tag and a CRC-32 instead of a zip.

The stores:

* :class:`ClientStateStore`: each client's state (stream position, selector buffer and
  estimators, pruning subset and scores, battery) keyed by partition id and tagged with the
  round that produced it, ``ROOT/p000003/r000012.npz``: on a real board,
  ``fedtitan supernode --state-dir`` keeps its own there.
* :class:`StateFile`: in simulation the server keeps the clients' states in the run folder
  (a state travels with the train message and the reply), the states a round brought back in
  one file, ``ROOT/round-000012.states`` (``strategies.client_states``).
* :class:`CheckpointStore`: the server's state after a round, ``ROOT/round-000012.npz``,
  written atomically (temporary file, fsync, rename), the last ``keep`` of them kept. A
  truncated or corrupt checkpoint is refused in one line and the previous one is used.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtitan.errors import FedtitanError
from fedtitan.fileio import atomic_writer, fsync_dir, fsync_file

log = logging.getLogger("fedtitan")

FORMAT_VERSION = 1


class StateError(FedtitanError):
    """State that cannot be written as data, or a file that is not a valid state."""


# ----------------------------------------------------------------------------- the format
def _encode(value: Any, arrays: list[np.ndarray], path: str) -> Any:
    """``value`` as a JSON node; arrays are appended to ``arrays`` and referenced by index."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float) and not isinstance(value, np.generic):
        return value if isinstance(value, int) else {"f": repr(float(value))}  # repr keeps nan/inf exact
    if isinstance(value, np.generic):
        value = np.asarray(value)
        arrays.append(value)
        return {"s": len(arrays) - 1}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise StateError(f"state {path}: an object array cannot be saved as data; use numeric arrays")
        arrays.append(value)
        return {"a": len(arrays) - 1}
    if type(value).__module__ == "torch" and type(value).__name__ in ("Tensor", "Parameter"):
        import torch

        t = value.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: keep its bits
            t = t.view(torch.int16)
        arrays.append(t.numpy())
        return {"T": len(arrays) - 1, "dtype": dtype}
    if isinstance(value, tuple):
        return {"t": [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return {"l": [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            key = int(k) if isinstance(k, np.integer) else k
            if not isinstance(key, str | int | float):
                raise StateError(f"state {path}: dict key {k!r} ({type(k).__name__}) is not a string or number")
            items.append([_encode(key, arrays, path), _encode(v, arrays, f"{path}.{k}")])
        return {"d": items}
    raise StateError(f"state {path}: a {type(value).__module__}.{type(value).__name__} cannot be saved as data "
                     "(allowed: numbers, strings, lists, dicts, numpy arrays, torch tensors)")


def _decode(node: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if node is None or isinstance(node, bool | int | str):
        return node
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise StateError(f"unknown node in state: {str(node)[:80]}")
    if "f" in node:
        return float(node["f"])
    if "s" in node:
        return arrays[f"a{node['s']}"][()]
    if "a" in node:
        return arrays[f"a{node['a']}"]
    if "T" in node:
        import torch

        t = torch.from_numpy(np.array(arrays[f"a{node['T']}"]))
        dtype = getattr(torch, str(node.get("dtype", "")), None)
        if dtype is torch.bfloat16:
            return t.view(torch.bfloat16)
        return t if dtype is None else t.to(dtype)
    if "t" in node:
        return tuple(_decode(v, arrays) for v in node["t"])
    if "l" in node:
        return [_decode(v, arrays) for v in node["l"]]
    if "d" in node:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in node["d"]}
    raise StateError(f"unknown node in state: {str(node)[:80]}")


def write_state(fh: Any, value: Any) -> None:
    """Write ``value`` to the binary file ``fh`` as data: npz (JSON tree + arrays), or, when
    it holds no array (a stream's position, a battery level), the JSON tree alone behind a
    tag and its CRC-32 (a few microseconds where a zip takes a hundred)."""
    arrays: list[np.ndarray] = []
    tree = {"format": FORMAT_VERSION, "value": _encode(value, arrays, "")}
    text = json.dumps(tree, separators=(",", ":")).encode()
    if not arrays:
        fh.write(_JSON_TAG + zlib.crc32(text).to_bytes(4, "big") + text)
        return
    blob = np.frombuffer(text, dtype=np.uint8)
    np.savez(fh, __tree__=blob, **{f"a{i}": a for i, a in enumerate(arrays)})  # type: ignore[arg-type]


_JSON_TAG = b"FTSTATE-JSON\n"  # never the start of a zip (those begin "PK")


def pack(value: Any) -> bytes:
    """``value`` as bytes (see :func:`write_state`), e.g. to travel in a Flower ConfigRecord."""
    buf = io.BytesIO()
    write_state(buf, value)
    return buf.getvalue()


def _tree(tree: Any, arrays: Mapping[str, np.ndarray], what: str) -> Any:
    if not isinstance(tree, dict) or tree.get("format") != FORMAT_VERSION:
        found = tree.get("format") if isinstance(tree, dict) else None
        raise StateError(f"{what} has format {found!r}; this fedtitan reads {FORMAT_VERSION}")
    return _decode(tree["value"], arrays)


def unpack(data: bytes | str | os.PathLike[str], what: str = "state") -> Any:
    """The value :func:`pack` / :func:`write_state` wrote (bytes or a file path). Never unpickles;
    anything truncated, corrupt or not written by fedtitan is a :class:`StateError` naming ``what``."""
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")  # noqa: SIM115 - closed below
        with src:
            head = src.read(len(_JSON_TAG))
            if head == _JSON_TAG:
                body = src.read()
                crc, text = body[:4], body[4:]
                if len(crc) < 4 or zlib.crc32(text) != int.from_bytes(crc, "big"):
                    raise ValueError("its checksum does not match")
                return _tree(json.loads(text.decode()), {}, what)
            src.seek(0)
            with np.load(src, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}  # reads every member: zip CRCs are checked here
        return _tree(json.loads(bytes(arrays.pop("__tree__")).decode()), arrays, what)
    except StateError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise StateError(f"{what} is truncated or corrupt ({type(exc).__name__}: {str(exc)[:120]})") from None


# ----------------------------------------------------------------------------- client state
_ROUND_FILE = re.compile(r"r(\d+)\.npz$")


class ClientStateStore:
    """Client states on disk, ``ROOT/pPID/rROUND.npz``, each tagged with the round that made it.

    ``keep``: how many of a partition's newest states stay (2: a server that resumes one
    round back still finds the state it needs); :meth:`put` may also be told rounds to keep
    (those a retained checkpoint refers to). Writes are atomic."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)
        self._made: set[int] = set()  # partitions whose folder this store has made

    def _dir(self, partition_id: int) -> Path:
        return self.root / f"p{int(partition_id):06d}"

    def path(self, partition_id: int, server_round: int) -> Path:
        return self._dir(partition_id) / f"r{int(server_round):06d}.npz"

    def rounds(self, partition_id: int) -> list[int]:
        """The rounds whose state this partition has on disk, oldest first."""
        d = self._dir(partition_id)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _ROUND_FILE.fullmatch(p.name)))

    def put(self, partition_id: int, server_round: int, state: Any | bytes, keep_rounds: Iterable[int] = (),
            fsync: bool = True) -> int:
        """Store the state ``server_round`` produced (a value, or bytes from :func:`pack`). Kept:
        this one, the ``keep - 1`` before it and those in ``keep_rounds``; the rest (later
        rounds too) are removed. Returns the bytes written. ``fsync=False``: the file is
        complete under its name once this returns (a killed process loses nothing), but
        reaching the disk through a power cut is the caller's to ensure (:class:`FileSyncer`)."""
        blob = state if isinstance(state, bytes) else pack(state)
        path = self.path(partition_id, server_round)
        if partition_id not in self._made:  # one mkdir a partition, not one a put
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(partition_id)
        before = self.rounds(partition_id)
        with atomic_writer(path, fsync=fsync) as fh:
            fh.write(blob)
        # this round and the keep-1 before it stay; states of later rounds are a cut-off
        # future that is being redone, so they go
        older = [r for r in before if r < server_round]
        keep = {int(server_round), *(older[-(self.keep - 1):] if self.keep > 1 else []), *keep_rounds}
        for r in before:
            if r not in keep:
                self.path(partition_id, r).unlink(missing_ok=True)
        return len(blob)

    def read(self, partition_id: int, server_round: int) -> bytes:
        return self.path(partition_id, server_round).read_bytes()

    def get(self, partition_id: int, before: int | None = None) -> tuple[int, Any] | None:
        """``(round, state)`` of the newest readable state made before round ``before`` (all
        rounds if None); a corrupt file is skipped with a warning; None when there is none."""
        for r in reversed(self.rounds(partition_id)):
            if before is not None and r >= before:
                continue
            path = self.path(partition_id, r)
            try:
                return r, unpack(path, f"client state {path}")
            except StateError as exc:
                log.warning("%s; using an older one", exc)
        return None


class StateFile:
    """Several clients' states in one file, ``round-NNNNNN.states``: the states a round (or an
    asynchronous dispatch) brought back, written at once (a server's one write and one ``fsync``
    a round instead of one file per client). Layout: a tag, the length of a JSON header naming
    each partition and its state's length, then the states (:func:`pack`'s bytes, each with its
    own checksum) one after another."""

    TAG = b"FTSTATES1\n"

    @staticmethod
    def write(path: Path, states: Mapping[int, bytes]) -> dict[int, tuple[int, int]]:
        """Write ``states`` (partition -> bytes) atomically, without an fsync (see
        :class:`FileSyncer`); returns where each one is (offset, length)."""
        pids = [int(p) for p in states]
        header = json.dumps({"pids": pids, "lengths": [len(states[p]) for p in pids]},
                            separators=(",", ":")).encode()
        offset = len(StateFile.TAG) + 8 + len(header)
        index = {}
        with atomic_writer(path) as fh:
            fh.write(StateFile.TAG + len(header).to_bytes(8, "big") + header)
            for pid in pids:
                fh.write(states[pid])
                index[pid] = (offset, len(states[pid]))
                offset += len(states[pid])
        return index

    @staticmethod
    def index(path: Path) -> dict[int, tuple[int, int]]:
        """Where each partition's state is in the file (:meth:`write`'s answer, read back)."""
        try:
            with open(path, "rb") as fh:
                if fh.read(len(StateFile.TAG)) != StateFile.TAG:
                    raise ValueError("it is not a fedtitan state file")
                size = int.from_bytes(fh.read(8), "big")
                head = json.loads(fh.read(size).decode())
            offset, index = len(StateFile.TAG) + 8 + size, {}
            for pid, n in zip(head["pids"], head["lengths"], strict=True):
                index[int(pid)] = (offset, int(n))
                offset += int(n)
            return index
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise StateError(f"client states {path} are truncated or corrupt ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None

    @staticmethod
    def read(path: Path, where: tuple[int, int]) -> bytes:
        offset, length = where
        with open(path, "rb") as fh:
            fh.seek(offset)
            blob = fh.read(length)
        if len(blob) != length:
            raise StateError(f"client states {path} are truncated (a state ends past its end)")
        return blob


class FileSyncer:
    """Files written without ``fsync`` made durable in a background thread, in the order
    written; :meth:`wait` returns once all of them are on disk. A server stores each client's
    state as its reply comes and waits only before the checkpoint that refers to them: a
    client's ``fsync`` (about 0.4 ms here, more on a laptop's disk) leaves the round's path.
    A file removed before its turn needs none."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def add(self, path: Path) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtitan-fsync")
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._pool.submit(fsync_file, path))

    def wait(self) -> None:
        """Block until every file added so far is on disk; a failed ``fsync`` is raised here
        (a full disk as :class:`DiskFullError`)."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


# ----------------------------------------------------------------------------- checkpoints
_CKPT_FILE = re.compile(r"round-(\d+)\.npz$")


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    path: Path
    state: dict[str, Any]


class CheckpointStore:
    """The server's checkpoints, ``ROOT/round-NNNNNN.npz``, newest ``keep`` kept."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)

    def path(self, server_round: int) -> Path:
        return self.root / f"round-{int(server_round):06d}.npz"

    def rounds(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _CKPT_FILE.fullmatch(p.name)))

    @staticmethod
    def encode(server_round: int, state: Mapping[str, Any]) -> bytes:
        """The checkpoint file's bytes (its size is known before it is written)."""
        return pack({"server_round": int(server_round), **state})

    def save(self, server_round: int, state: Mapping[str, Any] | bytes) -> tuple[float, int]:
        """Write the checkpoint of ``server_round`` atomically (a crash while writing leaves the
        previous ones as they were), then drop the oldest beyond ``keep``. ``state``: a value,
        or :meth:`encode`'s bytes. (seconds, bytes)."""
        t0 = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(server_round)
        with atomic_writer(path, fsync=True) as fh:
            if isinstance(state, bytes):
                fh.write(state)
            else:
                write_state(fh, {"server_round": int(server_round), **state})
        size = path.stat().st_size
        for r in self.rounds()[:-self.keep]:
            self.path(r).unlink(missing_ok=True)
        fsync_dir(self.root)
        return time.perf_counter() - t0, size

    def latest(self, at_most: int | None = None) -> Checkpoint | None:
        """The newest valid checkpoint (of a round <= ``at_most``); a corrupt or truncated one is
        refused with one warning line and the previous one is tried."""
        for r in reversed(self.rounds()):
            if at_most is not None and r > at_most:
                continue
            path = self.path(r)
            try:
                state = unpack(path, f"checkpoint {path}")
                if not isinstance(state, dict) or int(state.get("server_round", -1)) != r:
                    raise StateError(f"checkpoint {path} does not hold round {r}")
            except StateError as exc:
                log.warning("%s; using the previous checkpoint", exc)
                continue
            return Checkpoint(r, path, state)
        return None


__all__ = ["Checkpoint", "CheckpointStore", "ClientStateStore", "FileSyncer", "StateError", "StateFile", "pack", "unpack",
           "write_state"]
