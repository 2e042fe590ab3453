"""fedtitan's wire: every message key once, and the client's report with its one translation.

Flower messages are ``RecordDict``s of named records. Nothing here imports Flower: the keys are
strings, and :class:`ClientReport` goes to and from plain mappings that a ``MetricRecord`` (numbers
only) and a ``ConfigRecord`` (strings) hold.

A train message: ``{CONFIG_RECORD: ConfigRecord, ARRAYS_RECORD: ArrayRecord}`` whose config has
the run config (``RUN_CONFIG_KEY``), ``SERVER_ROUND_KEY``, ``RUN_TOKEN_KEY``, ``ROUND_START_KEY``,
in a simulation ``PARTITION_KEY`` (the partition a worker plays), the partition's last state
(``STATE_KEY``, ``STATE_ROUND_KEY``) and, when the weights travel through Ray's object store
instead of ``ARRAYS_RECORD``, their name (``ARRAYS_KEY``); every other key is the strategy's
(``PROXIMAL_MU_KEY``, ``CLIPPING_NORM_KEY``, ...).

Its reply: ``ARRAYS_RECORD`` (or an ``ARRAYS_KEY`` ConfigRecord ``{ARRAYS_NAME: key}``),
``METRICS_RECORD`` (the report's numbers), ``REPORT_RECORD`` (the report's strings) and, without
a node state folder, ``STATE_RECORD`` (``{STATE_NPZ: bytes, STATE_ROUND: int}``). Flower's
strategies aggregate a reply only with exactly one ArrayRecord and one MetricRecord holding
``NUM_EXAMPLES``, with the same keys across clients: the report's numbers always carry the same
keys (``METRIC_KEYS``, then the selector's diagnostics under ``INFO_PREFIX``: the same names for
every client of a run), and its strings travel in a ConfigRecord, which aggregation ignores.

A bundle (simulation workers only): one train message for several clients of a round that
share the weights and the strategy's config. Its config names their partitions in order
(``BUNDLE_KEY``) and each one's last state under ``member_key(i, STATE_KEY)`` /
``member_key(i, STATE_ROUND_KEY)``; its reply holds each client's records under
``member_key(i, name)`` (``ARRAYS_RECORD``, ``METRICS_RECORD``, ``REPORT_RECORD``,
``STATE_RECORD``), or ``member_key(i, ERROR_RECORD)`` (``{"code", "reason"}``) for a client
that raised. The server turns it back into one reply per client before anything else sees it.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from fedtitan.status import Status

# Records of a message's RecordDict
CONFIG_RECORD = "config"  # ConfigRecord: what the server asks (train, evaluate, query)
ARRAYS_RECORD = "arrays"  # ArrayRecord: model weights, both ways
METRICS_RECORD = "metrics"  # MetricRecord: a reply's numbers
STATE_RECORD = "fedtitan-state"  # reply ConfigRecord: the client's new state {STATE_NPZ, STATE_ROUND}
ARRAYS_KEY = "fedtitan-arrays"  # reply ConfigRecord {ARRAYS_NAME}: new weights in Ray's object store
REPORT_RECORD = "fedtitan-report"  # reply ConfigRecord: the report's strings (ClientReport.to_wire)

# Keys of a message's CONFIG_RECORD set by fedtitan (the rest are the strategy's)
RUN_CONFIG_KEY = "config"  # the run's Config as JSON
SERVER_ROUND_KEY = "server-round"  # Flower's own name
RUN_TOKEN_KEY = "run-token"  # names the run (a node's state folder)
ROUND_START_KEY = "round-start-s"  # the virtual clock at the round's start
# the round a client's learning-rate schedule reads (asynchronous runs: the server step its update
# is for; SERVER_ROUND_KEY is then the dispatch's number, which keys its seeds and state)
SCHEDULE_ROUND_KEY = "schedule-round"
PARTITION_KEY = "partition-id"  # the partition a simulation worker plays
STATE_KEY = STATE_RECORD  # the partition's last state (npz bytes)...
STATE_ROUND_KEY = f"{STATE_RECORD}-round"  # ...and the round that made it
QUERY_KEY = "what"  # a query message: what the server asks for (QUERY_PARTITION)
QUERY_PARTITION = PARTITION_KEY
BUNDLE_KEY = "fedtitan-bundle"  # a bundle's partitions, in order (list of ints)
ERROR_RECORD = "fedtitan-error"  # a bundle member that raised: {"code": int, "reason": str}
# Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION (spelled out: Flower moves its internal modules)
CLIENT_APP_RAISED_EXCEPTION = 2
OWN_CONFIG_KEYS = (RUN_CONFIG_KEY, SERVER_ROUND_KEY, RUN_TOKEN_KEY, ROUND_START_KEY, PARTITION_KEY,
                   STATE_KEY, STATE_ROUND_KEY, ARRAYS_KEY, BUNDLE_KEY, SCHEDULE_ROUND_KEY)


def member_key(i: int, name: str) -> str:
    """The name of bundle member ``i``'s own entry ``name`` (a config key or a reply record)."""
    return f"{i}:{name}"

# Keys a Flower strategy adds to the train config (Flower's spelling; it moves its internal
# modules between releases, so they are spelled out here)
PROXIMAL_MU_KEY = "proximal-mu"  # FedProx
CLIPPING_NORM_KEY = "clipping_norm"  # client-side DP wrappers (flwr.supercore's KEY_CLIPPING_NORM)

# Fields of reply records
STATE_NPZ = "npz"
STATE_ROUND = "round"
ARRAYS_NAME = "key"
NUM_EXAMPLES = "num-examples"  # Flower's weighting key, in every MetricRecord reply
PARTITION_ID = "partition_id"  # in train, evaluate and query replies
NUM_PARTITIONS = "num_partitions"  # query reply: how many partitions the node config names
LOSS = "loss"  # evaluate reply
ACCURACY = "accuracy"  # evaluate reply
DEVICE = "device"  # REPORT_RECORD: the device's name
STATUS = "status"  # METRICS_RECORD: Status.code
BATTERY_J = "battery_j"  # METRICS_RECORD: the battery's charge after the round (-1: no battery)
INFO_PREFIX = "info_"  # METRICS_RECORD: the selector's diagnostics (ClientReport.extra), after METRIC_KEYS

# Keys of a node's config (``flower-supernode --node-config``, the simulation's virtual nodes)
NODE_PARTITION = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DEVICE = "device"  # a catalog name or a profile TOML
NODE_METER = "meter"  # simulated | measured
NODE_STATE_DIR = "state-dir"

@dataclass(frozen=True, slots=True)
class ClientReport:
    """What a client reports after a train round. Every number is on the wire as a float under
    the field's name (``num_examples`` as Flower's ``num-examples``); ``device`` as a string."""

    partition_id: int
    device: str  # the profile's name: catalog, fleet.profiles or the node's --device
    status: Status = Status.OK
    num_examples: int = 0
    train_loss: float = 0.0
    # the simulated clock and meter: the round, and its phases
    sim_time_s: float = 0.0
    sim_energy_j: float = 0.0
    sim_train_s: float = 0.0
    sim_select_s: float = 0.0
    sim_comm_s: float = 0.0
    sim_train_j: float = 0.0
    sim_select_j: float = 0.0
    sim_comm_j: float = 0.0
    sim_idle_j: float = 0.0
    # this machine's wall clock
    train_wall_ms: float = 0.0
    select_wall_ms: float = 0.0
    sync_wall_ms: float = 0.0
    steps_wall_ms: float = 0.0
    train_on_gpu: bool = False
    select_on_gpu: bool = False
    # counts: samples streamed (static: warmed up), selected (static: trained), steps
    streamed: int = 0
    selected: int = 0
    steps: int = 0
    rho: float = 1.0
    proximal_mu: float = 0.0
    fault_scaled: bool = False
    # the fleet's dynamics at the round's start
    available: bool = True
    speed_factor: float = 1.0
    select_share: float = 1.0
    bandwidth_factor: float = 1.0
    buffer_size: int = 0  # candidates per selection
    # measured (a real board) or simulated: the round's wall time and energy
    measured: bool = False
    wall_s: float = 0.0
    energy_j: float = 0.0  # NaN when measured without an energy reading
    energy_available: bool = True
    battery_j: float | None = None  # None: no battery
    # the selector's diagnostics (Selection.info over the round): numbers under fixed names,
    # the same for every client of a run (its selector's ``info_keys``), NaN where none
    extra: Mapping[str, float] = field(default_factory=dict)

    def to_wire(self) -> tuple[dict[str, float], dict[str, str]]:
        """(numbers for a MetricRecord, strings for a ConfigRecord). The numbers keep one key
        set and order whatever happened, as Flower's aggregation and clients.csv need."""
        numbers = {key: float(getattr(self, field)) for key, field, _ in _NUMBERS}
        numbers[STATUS] = self.status.code
        numbers[BATTERY_J] = -1.0 if self.battery_j is None else float(self.battery_j)
        wire = {k: numbers[k] for k in METRIC_KEYS}
        wire.update({INFO_PREFIX + k: float(v) for k, v in self.extra.items()})
        return wire, {DEVICE: self.device}

    @classmethod
    def from_wire(cls, metrics: Mapping[str, Any], strings: Mapping[str, Any] | None = None) -> ClientReport:
        """The report a reply carries: its MetricRecord and its ``REPORT_RECORD`` (the device's
        name; "" when a reply has none)."""
        values = {field: decode(metrics[key]) for key, field, decode in _NUMBERS}
        device = str(strings[DEVICE]) if strings is not None and DEVICE in strings else ""
        battery = float(metrics[BATTERY_J])
        extra = {k[len(INFO_PREFIX):]: float(v) for k, v in metrics.items() if k.startswith(INFO_PREFIX)}
        return cls(device=device, status=Status.from_code(float(metrics[STATUS])),
                   battery_j=None if battery < 0 else battery, extra=extra, **values)


def _as_int(value: Any) -> int:
    v = float(value)
    if not math.isfinite(v) or v != int(v):
        raise ValueError(f"expected a count, got {value!r}")
    return int(v)


def _as_bool(value: Any) -> bool:
    return float(value) >= 0.5


# (wire key, field, decoder) of the numbers sent as they are (STATUS and BATTERY_J are encoded);
# the key is the field's name but for Flower's NUM_EXAMPLES
_DECODE: dict[str, Any] = {"int": _as_int, "bool": _as_bool, "float": float}
_NUMBERS = tuple((NUM_EXAMPLES if f.name == "num_examples" else f.name, f.name, _DECODE[str(f.type)])
                 for f in fields(ClientReport) if f.name not in ("device", "status", "battery_j", "extra"))
# every key of a train reply's MetricRecord, in the wire's order (clients.csv's columns follow it)
METRIC_KEYS = (
    NUM_EXAMPLES, PARTITION_ID, "train_loss", "sim_time_s", "sim_energy_j", "sim_train_s",
    "sim_select_s", "sim_comm_s", "sim_train_j", "sim_select_j", "sim_comm_j", "sim_idle_j", "train_wall_ms",
    "select_wall_ms", "sync_wall_ms", "steps_wall_ms", "train_on_gpu", "select_on_gpu", "streamed", "selected",
    "steps", "rho", "proximal_mu", "fault_scaled", "available", "speed_factor", "select_share",
    "bandwidth_factor", "buffer_size", STATUS, "measured", "wall_s", "energy_j", "energy_available",
    BATTERY_J,
)


__all__ = [
    "ACCURACY", "ARRAYS_KEY", "BATTERY_J", "ARRAYS_NAME", "ARRAYS_RECORD", "BUNDLE_KEY", "CLIENT_APP_RAISED_EXCEPTION",
    "CLIPPING_NORM_KEY",
    "CONFIG_RECORD", "DEVICE", "ERROR_RECORD", "INFO_PREFIX", "member_key",
    "LOSS", "METRICS_RECORD", "METRIC_KEYS", "NODE_DEVICE", "NODE_METER", "NODE_NUM_PARTITIONS",
    "NODE_PARTITION", "NODE_STATE_DIR", "NUM_EXAMPLES", "NUM_PARTITIONS", "OWN_CONFIG_KEYS", "PARTITION_ID",
    "PARTITION_KEY", "PROXIMAL_MU_KEY", "QUERY_KEY", "QUERY_PARTITION", "REPORT_RECORD", "ROUND_START_KEY",
    "RUN_CONFIG_KEY", "RUN_TOKEN_KEY", "SCHEDULE_ROUND_KEY", "SERVER_ROUND_KEY", "STATE_KEY", "STATE_NPZ", "STATE_RECORD", "STATE_ROUND",
    "STATE_ROUND_KEY", "STATUS", "ClientReport",
]


# ----------------------------------------------------------------------------- arrays
# Flower's Array holds a NumPy array as the bytes ``np.save`` writes (dtype and shape beside
# them). Its own ``numpy()`` parses the header with ``ast.literal_eval`` on every call, and
# ``from_numpy_ndarray`` formats it each time: for a small model's six arrays that was about
# a millisecond a client round, each way. These give the same bytes and arrays, reading and
# writing the header once per (dtype, shape).
_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def npy_bytes(a: np.ndarray) -> bytes:
    """``a`` as ``np.save(buf, a, allow_pickle=False)`` writes it (C order)."""
    a = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (ascontiguousarray makes a 0-d array 1-d)
    key = (a.dtype.str, a.shape)
    head = _NPY_HEADERS.get(key)
    if head is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(a))
        head = _NPY_HEADERS.setdefault(key, buf.getvalue())
    return head + a.tobytes()


def npy_array(data: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray | None:
    """The array ``np.save`` wrote into ``data``, whose dtype and shape are known (a writable
    copy, as ``np.load`` gives); None when the header says otherwise (Fortran order, another
    byte order, another dtype or shape): then ``np.load`` must read it."""
    if data[:6] != b"\x93NUMPY" or sys.byteorder != "little":
        return None
    if data[6] == 1:
        start, size = 10, int.from_bytes(data[8:10], "little")
    elif data[6] in (2, 3):
        start, size = 12, int.from_bytes(data[8:12], "little")
    else:
        return None
    header = data[start:start + size]
    dt = np.dtype(dtype)
    dims = tuple(int(d) for d in shape)
    if (b"'fortran_order': False" not in header or f"'descr': '{dt.str}'".encode() not in header
            or f"'shape': {dims}".encode() not in header):
        return None
    return np.frombuffer(data, dt, count=math.prod(dims), offset=start + size).reshape(dims).copy()
