"""Devices that change over time: availability, speed, idle share of the selecting unit and
bandwidth, as pure functions of (seed, client, virtual time).

``Factors`` at a moment: ``available`` (0/1), ``speed_factor`` (multiplies both compute
rates: thermal throttling, DVFS), ``select_share`` (the share of the selecting unit that is
idle: background load from other apps) and ``bandwidth_factor`` (multiplies up- and
downlink). A dynamics model maps ``(partition_id, t_s)`` to factors; the server and every
client evaluate it at the round's start on the virtual clock, the only time it sees, so a
run is reproducible whatever order clients run in.

Models (``fleet.dynamics`` + ``[fleet.dynamics_options]``):

* ``static``: always available, every factor 1.
* ``diurnal``: a day/night cycle of ``period_s`` with a per-device seeded phase. At
  "night" (phase 0) devices are idle, charging and on Wi-Fi; at "day" (phase 1/2) users
  are busy with them. Availability is a Bernoulli draw per ``slot_s`` slot with a
  probability between ``availability_min`` (day) and ``availability_max`` (night);
  ``select_share``, ``speed_factor`` and ``bandwidth_factor`` move between their ``*_min``
  (day) and ``*_max`` (night) values along the same cosine.
* ``random-walk``: every ``step_s`` seconds each factor takes a seeded Gaussian step of
  ``sigma`` in log space, reflected into ``[*_min, *_max]``; availability is an on/off
  Markov chain (``p_leave`` per step to go offline, ``p_return`` to come back).

A trace (``fleet.trace = "trace.csv"``) overrides the model where it has a value: rows
``device`` (a device kind: every client of that kind) or ``partition_id`` (one client),
``t_start_s``, ``t_end_s``, and any of ``available``, ``speed_factor``, ``select_share``,
``bandwidth_factor``. A client's own rows win over its kind's rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedtitan.devices.catalog import DeviceProfile
from fedtitan.errors import ConfigError, did_you_mean

FACTOR_COLUMNS = ("available", "speed_factor", "select_share", "bandwidth_factor")
MASK32, MASK64 = (1 << 32) - 1, (1 << 64) - 1


@dataclass(frozen=True)
class Factors:
    available: bool = True
    speed_factor: float = 1.0
    select_share: float = 1.0
    bandwidth_factor: float = 1.0

    def apply(self, p: DeviceProfile) -> DeviceProfile:
        """The profile as it is at this moment: slower compute, a busier selecting unit, a
        thinner link (the cost model bills with these rates)."""
        if self == STATIC:
            return p
        return replace(p, train_flops=p.train_flops * self.speed_factor,
                       select_flops=p.select_flops * self.speed_factor * max(self.select_share, 1e-6),
                       uplink_bytes_per_s=p.uplink_bytes_per_s * self.bandwidth_factor,
                       downlink_bytes_per_s=p.downlink_bytes_per_s * self.bandwidth_factor)


STATIC = Factors()


@dataclass(frozen=True)
class FactorTable:
    """The factors of many clients at one moment, one array entry per client."""

    available: np.ndarray  # bool
    speed_factor: np.ndarray
    select_share: np.ndarray
    bandwidth_factor: np.ndarray

    @classmethod
    def of(cls, factors: Sequence[Factors]) -> FactorTable:
        return cls(np.array([f.available for f in factors], dtype=bool),
                   *(np.array([getattr(f, c) for f in factors], dtype=np.float64) for c in FACTOR_COLUMNS[1:]))


class Dynamics(Protocol):
    def factors(self, partition_id: int, t_s: float) -> Factors: ...


class StaticDynamics:
    def factors(self, partition_id: int, t_s: float) -> Factors:
        return STATIC


def _u01(*key: int) -> float:
    """A uniform draw that is a pure function of ``key``."""
    return float(np.random.default_rng(list(key)).random())


@dataclass(frozen=True)
class DiurnalDynamics:
    seed: int
    period_s: float = 86_400.0
    slot_s: float = 600.0
    availability_min: float = 0.3
    availability_max: float = 1.0
    select_share_min: float = 0.3
    select_share_max: float = 1.0
    speed_min: float = 1.0
    speed_max: float = 1.0
    bandwidth_min: float = 1.0
    bandwidth_max: float = 1.0

    # draws kept between calls (pure in their keys): device -> phase; the current slot's availability draws
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _phase(self, partition_id: int) -> float:
        return _u01(self.seed, partition_id, 0xD1)

    def _night_at(self, phase: float, t_s: float) -> float:
        """1 at the device's night (idle, charging), 0 at its midday."""
        return 0.5 * (1.0 + math.cos(2 * math.pi * (t_s / self.period_s - phase)))

    def _night(self, partition_id: int, t_s: float) -> float:
        return self._night_at(self._phase(partition_id), t_s)

    def factors_many(self, partition_ids: Sequence[int] | np.ndarray, t_s: float) -> FactorTable:
        """:meth:`factors` of many devices at once, equal to it bit for bit, at the cost of
        numpy: each device's phase is drawn once a run and its availability once a slot
        (both are pure functions of their keys), and the same float operations follow."""
        ids = [int(p) for p in np.asarray(partition_ids, dtype=np.int64).reshape(-1).tolist()]
        phases: dict[int, float] = self._memo.setdefault("phase", {})
        slot = int(t_s // self.slot_s)
        if self._memo.get("slot") != slot:
            self._memo["slot"], self._memo["draws"] = slot, {}
        draws: dict[int, float] = self._memo["draws"]
        for p in ids:
            if p not in phases:
                phases[p] = self._phase(p)
            if p not in draws:
                draws[p] = _u01(self.seed, p, slot, 0xA7)
        night = np.array([self._night_at(phases[p], t_s) for p in ids], dtype=np.float64)

        def lerp(lo: float, hi: float) -> np.ndarray:
            return lo + (hi - lo) * night

        available = np.array([draws[p] for p in ids], dtype=np.float64) < lerp(self.availability_min,
                                                                                  self.availability_max)
        return FactorTable(available, lerp(self.speed_min, self.speed_max),
                           lerp(self.select_share_min, self.select_share_max), lerp(self.bandwidth_min, self.bandwidth_max))

    def factors(self, partition_id: int, t_s: float) -> Factors:
        night = self._night(partition_id, t_s)

        def lerp(lo: float, hi: float) -> float:
            return lo + (hi - lo) * night

        p_avail = lerp(self.availability_min, self.availability_max)
        slot = int(t_s // self.slot_s)
        available = _u01(self.seed, partition_id, slot, 0xA7) < p_avail
        return Factors(available, lerp(self.speed_min, self.speed_max), lerp(self.select_share_min, self.select_share_max),
                       lerp(self.bandwidth_min, self.bandwidth_max))


# a batch of fewer clients than this walks one numpy generator at a time (numpy's own draws);
# a larger one walks as arrays (fedtitan.devices.streams), in chunks of _CHUNK clients
_ARRAY_MIN = 64
_CHUNK = 1 << 16
_WALK_TAG = 0x5A1C  # a client's walk draws from np.random.default_rng([seed, client, _WALK_TAG])


class _WalkStates:
    """Where each asked client's walk stands: its generator's state (PCG64: state and
    increment, 128 bits each, as uint64 halves), its position ``x`` (log factors), on/off, and
    how many steps it has walked (-1: not started). 73 bytes a client, whatever the time."""

    def __init__(self) -> None:
        self.slot_of = np.full(0, -1, dtype=np.int64)  # client id -> its row below
        self.size = 0
        self.s_hi, self.s_lo, self.i_hi, self.i_lo = (np.zeros(0, dtype=np.uint64) for _ in range(4))
        self.x = np.zeros((0, 3))
        self.on = np.zeros(0, dtype=bool)
        self.done = np.zeros(0, dtype=np.int64)

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ``ids`` (distinct, >= 0), made for those never asked (not started)."""
        if len(ids) and int(ids.max()) >= len(self.slot_of):
            grown = np.full(max(int(ids.max()) + 1, 2 * len(self.slot_of)), -1, dtype=np.int64)
            grown[:len(self.slot_of)] = self.slot_of
            self.slot_of = grown
        slots = self.slot_of[ids]
        new = np.flatnonzero(slots < 0)
        if len(new):
            need = self.size + len(new)
            if need > len(self.done):
                cap = max(need, 2 * len(self.done), 16)
                for name in ("s_hi", "s_lo", "i_hi", "i_lo", "x", "on", "done"):
                    old = getattr(self, name)
                    arr = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
                    arr[:len(old)] = old
                    setattr(self, name, arr)
            slots[new] = np.arange(self.size, need)
            self.slot_of[ids[new]] = slots[new]
            self.done[slots[new]] = -1
            self.size = need
        return slots


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (``np.unique``, whose hashing took 0.4 s on 1,000,000 ids)."""
    if len(values) < 2 or bool((values[1:] > values[:-1]).all()):
        return values
    v = np.sort(values)
    return v[np.concatenate(([True], v[1:] != v[:-1]))]


def _numpy_pcg64(s_hi: int, s_lo: int, i_hi: int, i_lo: int) -> dict[str, Any]:
    """A PCG64 state from its halves: the walk draws only 64-bit values, so no 32-bit half is
    ever left over."""
    return {"bit_generator": "PCG64", "state": {"state": (s_hi << 64) | s_lo, "inc": (i_hi << 64) | i_lo},
            "has_uint32": 0, "uinteger": 0}


@dataclass
class RandomWalkDynamics:
    seed: int
    step_s: float = 60.0
    sigma: float = 0.1
    p_leave: float = 0.02
    p_return: float = 0.2
    speed_min: float = 0.5
    speed_max: float = 1.0
    select_share_min: float = 0.1
    select_share_max: float = 1.0
    bandwidth_min: float = 0.25
    bandwidth_max: float = 1.0
    # where each asked client's walk stands (its generator, position, on/off, steps walked)
    _walks: _WalkStates = field(default_factory=_WalkStates, repr=False, compare=False)
    # the table factors_many gave last: (step, ids, available, exp(x)); the same step again reuses it
    _last: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def _bounds(self) -> np.ndarray:
        return np.array([[self.speed_min, self.speed_max], [self.select_share_min, self.select_share_max],
                         [self.bandwidth_min, self.bandwidth_max]], dtype=np.float64)

    def _cover(self, ids: np.ndarray, step: int) -> np.ndarray:
        """Walk each of ``ids`` to ``step`` (its state just after that step); their rows.

        A client keeps only where its walk stands, so memory does not grow with virtual time
        or with how far ahead the walk is asked. A later step goes on from there; an earlier
        one walks that client again from the start. Each client draws from its own generator,
        in the order the walk has always used (per step one uniform for on/off, then three
        normals), so a path never depends on which clients were asked with it or when; the
        arithmetic runs for all of them at once, with the same float operations element by
        element (bit for bit what one client alone gets)."""
        w = self._walks
        asked = _distinct(ids)
        if len(asked) and asked[0] < 0:
            raise ValueError(f"partition ids must be >= 0, got {int(asked[0])}")
        slots = w.slots(asked)
        target = step + 1
        again = np.flatnonzero((w.done[slots] < 0) | (w.done[slots] > target))
        if len(again):  # from the start: fast, idle, full bandwidth
            self._start(asked[again], slots[again])
        need = target - w.done[slots]
        for n in _distinct(need[need > 0]).tolist():
            group = slots[need == n]
            for at in range(0, len(group), _CHUNK):
                self._walk(group[at:at + _CHUNK], int(n))
        return w.slot_of[ids]

    def _start(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Put ``ids``'s walks (at ``slots``) at their start: the generator freshly seeded."""
        from fedtitan.devices.streams import seed_states, vectorised

        w = self._walks
        if len(ids) >= _ARRAY_MIN and int(ids[-1]) <= MASK32 and vectorised():  # ids: sorted
            for at in range(0, len(ids), _CHUNK):  # bounded scratch memory at any population
                part = slots[at:at + _CHUNK]
                w.s_hi[part], w.s_lo[part], w.i_hi[part], w.i_lo[part] = seed_states(
                    (self.seed,), ids[at:at + _CHUNK], (_WALK_TAG,))
        else:
            for p, slot in zip(ids.tolist(), slots.tolist(), strict=True):
                st = np.random.default_rng([self.seed, p, _WALK_TAG]).bit_generator.state["state"]
                w.s_hi[slot], w.s_lo[slot] = st["state"] >> 64, st["state"] & MASK64
                w.i_hi[slot], w.i_lo[slot] = st["inc"] >> 64, st["inc"] & MASK64
        w.x[slots] = np.log(self._bounds())[:, 1]
        w.on[slots] = True
        w.done[slots] = 0

    def _walk(self, slots: np.ndarray, n: int) -> None:
        """Walk the clients at ``slots`` ``n`` steps on from where they stand."""
        from fedtitan.devices.streams import Streams, vectorised

        w = self._walks
        bounds = np.log(self._bounds())
        lo, hi = bounds[:, 0], bounds[:, 1]
        width = np.maximum(hi - lo, 1e-12)
        x, on = w.x[slots], w.on[slots]
        if len(slots) >= _ARRAY_MIN and vectorised():
            streams = Streams(w.s_hi[slots], w.s_lo[slots], w.i_hi[slots], w.i_lo[slots])

            def draws(i: int) -> tuple[np.ndarray, np.ndarray]:
                u = streams.random()
                return u, np.column_stack([streams.standard_normal() for _ in range(3)])
        else:  # numpy's generators, one client at a time
            u_all, z_all = np.empty((len(slots), n)), np.empty((len(slots), n, 3))
            bit_gen: Any = np.random.PCG64()
            rng = np.random.Generator(bit_gen)
            for j, slot in enumerate(slots.tolist()):
                bit_gen.state = _numpy_pcg64(int(w.s_hi[slot]), int(w.s_lo[slot]), int(w.i_hi[slot]),
                                             int(w.i_lo[slot]))
                uj, zj = u_all[j], z_all[j]
                for i in range(n):
                    uj[i] = rng.random()
                    zj[i] = rng.standard_normal(3)
                after = bit_gen.state
                assert not after["has_uint32"]
                w.s_hi[slot], w.s_lo[slot] = after["state"]["state"] >> 64, after["state"]["state"] & MASK64
            streams = None

            def draws(i: int) -> tuple[np.ndarray, np.ndarray]:
                return u_all[:, i], z_all[:, i]
        for i in range(n):
            u, z = draws(i)
            on = np.where(on, u >= self.p_leave, u < self.p_return)
            x = x + self.sigma * z
            x = lo + np.abs(((x - lo) + width) % (2 * width) - width)  # reflect into [lo, hi]
        if streams is not None:
            w.s_hi[slots], w.s_lo[slots] = streams.s_hi, streams.s_lo
        w.x[slots], w.on[slots] = x, on
        w.done[slots] += n

    def _at(self, ids: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(available, exp(x): speed, select share, bandwidth as columns) of ``ids`` at ``step``."""
        slots = self._cover(ids, step)
        return self._walks.on[slots], np.exp(self._walks.x[slots])

    def factors_many(self, partition_ids: Sequence[int] | np.ndarray, t_s: float) -> FactorTable:
        """:meth:`factors` of many clients at once, equal to it bit for bit."""
        step = max(0, int(t_s // self.step_s))
        ids = np.asarray(partition_ids, dtype=np.int64).reshape(-1)
        last = self._last
        if last is None or last[0] != step or not np.array_equal(last[1], ids):  # else: the same step again
            on, e = self._at(ids, step)
            last = self._last = (step, ids.copy(), on, e)
        on, e = last[2], last[3]
        return FactorTable(on.copy(), e[:, 0].copy(), e[:, 1].copy(), e[:, 2].copy())

    def factors(self, partition_id: int, t_s: float) -> Factors:
        step = max(0, int(t_s // self.step_s))
        on, e = self._at(np.array([partition_id], dtype=np.int64), step)
        return Factors(bool(on[0]), float(e[0, 0]), float(e[0, 1]), float(e[0, 2]))


@dataclass(frozen=True)
class TraceRow:
    t_start_s: float
    t_end_s: float
    values: Mapping[str, float]


@dataclass
class Trace:
    """Intervals with factor values per client (``by_partition``) and per device kind (``by_device``)."""

    path: str
    by_partition: dict[int, list[TraceRow]]
    by_device: dict[str, list[TraceRow]]

    def values(self, partition_id: int, device: str, t_s: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for rows in (self.by_device.get(device, []), self.by_partition.get(partition_id, [])):
            for r in rows:
                if r.t_start_s <= t_s < r.t_end_s:
                    out.update(r.values)
        return out


def load_trace(path: str | Path, devices: Sequence[str] | None = None) -> Trace:
    """Read and validate a trace CSV for a fleet whose clients are ``devices`` (one name per
    partition id; ``None``: check the file alone). Every problem is one line: missing columns,
    negative or empty intervals, overlaps, unknown devices or partitions, values out of range.

    A file is read once for as long as it is unchanged (cached by path, size and modification
    time), so checking a run's config before it starts and building its fleet cost one read."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        raise ConfigError(f"fleet.trace: {p} not found") from None
    return _load_trace(str(p), st.st_mtime_ns, st.st_size, None if devices is None else tuple(devices))


@functools.lru_cache(maxsize=8)
def _load_trace(resolved: str, mtime_ns: int, size: int, devices: tuple[str, ...] | None) -> Trace:
    """:func:`load_trace`, once per (file, its size and modification time, fleet)."""
    import pandas as pd

    p = Path(resolved)
    try:
        df = pd.read_csv(p)
    except Exception as exc:
        raise ConfigError(f"fleet.trace: cannot read {p} as CSV: {exc}") from None
    cols = set(df.columns)
    who = [c for c in ("device", "partition_id") if c in cols]
    missing = [c for c in ("t_start_s", "t_end_s") if c not in cols]
    if not who:
        missing.insert(0, "device or partition_id")
    factors = [c for c in FACTOR_COLUMNS if c in cols]
    if not factors:
        missing.append("one of " + ", ".join(FACTOR_COLUMNS))
    if missing:
        raise ConfigError(f"fleet.trace {p}: missing column(s) {', '.join(missing)} (has {', '.join(df.columns)})")
    unknown_cols = cols - {"device", "partition_id", "t_start_s", "t_end_s", *FACTOR_COLUMNS}
    if unknown_cols:
        raise ConfigError(f"fleet.trace {p}: unknown column(s) {', '.join(sorted(unknown_cols))}; "
                          f"known: device, partition_id, t_start_s, t_end_s, {', '.join(FACTOR_COLUMNS)}")
    if df.empty:
        raise ConfigError(f"fleet.trace {p} has no rows")
    kinds = set(devices) if devices is not None else None
    by_partition: dict[int, list[TraceRow]] = {}
    by_device: dict[str, list[TraceRow]] = {}
    for i, row in df.iterrows():
        line = int(str(i)) + 2  # the header is line 1
        start, end = float(row["t_start_s"]), float(row["t_end_s"])
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise ConfigError(f"fleet.trace {p} line {line}: need 0 <= t_start_s < t_end_s, got {start} .. {end}")
        values = {}
        for c in factors:
            v = row[c]
            if pd.isna(v):
                continue
            v = float(v)
            ok = v in (0.0, 1.0) if c == "available" else (0.0 <= v <= 1.0 if c == "select_share" else 0.0 < v <= 100.0)
            if not ok:
                rule = {"available": "0 or 1", "select_share": "in [0, 1]"}.get(c, "in (0, 100]")
                raise ConfigError(f"fleet.trace {p} line {line}: {c} must be {rule}, got {v}")
            values[c] = v
        tr = TraceRow(start, end, values)
        pid = row.get("partition_id") if "partition_id" in cols else None
        if pid is not None and not pd.isna(pid):
            if float(pid) != int(pid) or pid < 0 or (devices is not None and int(pid) >= len(devices)):
                span = f"0..{len(devices) - 1}" if devices is not None else "an integer >= 0"
                raise ConfigError(f"fleet.trace {p} line {line}: partition_id {pid} is not a client of this fleet "
                                  f"({span})")
            by_partition.setdefault(int(pid), []).append(tr)
        else:
            dev = str(row.get("device", ""))
            if not dev or dev == "nan":
                raise ConfigError(f"fleet.trace {p} line {line}: give a device or a partition_id")
            if kinds is not None and dev not in kinds:
                raise ConfigError(f"fleet.trace {p} line {line}: device {dev!r} is not in this fleet"
                                  f"{did_you_mean(dev, sorted(kinds))} "
                                  f"(fleet: {', '.join(sorted(kinds))})")
            by_device.setdefault(dev, []).append(tr)
    for key, rows in [*by_partition.items(), *by_device.items()]:
        rows.sort(key=lambda r: r.t_start_s)
        for a, b in zip(rows, rows[1:], strict=False):
            if b.t_start_s < a.t_end_s:
                raise ConfigError(f"fleet.trace {p}: intervals overlap for {key!r}: {a.t_start_s}..{a.t_end_s} and "
                                  f"{b.t_start_s}..{b.t_end_s}")
    return Trace(str(p), by_partition, by_device)


def trace_summary(trace: Trace) -> tuple[Any, Any]:
    """(one row per device/partition: span, availability fraction, factor ranges; a long
    table of the trace's intervals for plotting) as DataFrames."""
    import pandas as pd

    rows, long = [], []
    for kind, table in (("partition", trace.by_partition), ("device", trace.by_device)):
        for who, intervals in table.items():
            label = f"partition {who}" if kind == "partition" else str(who)
            span = sum(r.t_end_s - r.t_start_s for r in intervals)
            with_avail = [r for r in intervals if "available" in r.values]
            up = sum((r.t_end_s - r.t_start_s) * r.values["available"] for r in with_avail)
            row: dict[str, Any] = {"who": label, "intervals": len(intervals), "t_start_s": intervals[0].t_start_s,
                                   "t_end_s": max(r.t_end_s for r in intervals),
                                   "available_fraction": up / sum(r.t_end_s - r.t_start_s for r in with_avail)
                                   if with_avail else float("nan"), "covered_s": span}
            for c in FACTOR_COLUMNS[1:]:
                vals = [r.values[c] for r in intervals if c in r.values]
                row[f"{c}_min"] = min(vals) if vals else float("nan")
                row[f"{c}_max"] = max(vals) if vals else float("nan")
            rows.append(row)
            long += [{"who": label, "t_start_s": r.t_start_s, "t_end_s": r.t_end_s, **r.values} for r in intervals]
    return pd.DataFrame(rows), pd.DataFrame(long)


class FleetDynamics:
    """The model and the trace together: what every client of a fleet is at a moment."""

    def __init__(self, model: Dynamics, devices: Sequence[str], trace: Trace | None = None) -> None:
        self.model = model
        self.devices = list(devices)
        self.trace = trace
        self._kinds: np.ndarray | None = None  # the devices as an array, made when a trace needs it

    @property
    def is_static(self) -> bool:
        return isinstance(self.model, StaticDynamics) and self.trace is None

    def factors_many(self, partition_ids: Sequence[int] | np.ndarray, t_s: float) -> FactorTable:
        """:meth:`factors` of many clients at once: the model's own ``factors_many`` where it
        has one (``diurnal``, ``random-walk``), then the trace's values for the clients it covers."""
        ids = np.asarray(partition_ids, dtype=np.int64).reshape(-1)
        many = getattr(self.model, "factors_many", None)
        table = many(ids, t_s) if many is not None else FactorTable.of([self.model.factors(p, t_s)
                                                                       for p in ids.tolist()])
        if self.trace is None:
            return table
        # as Trace.values: the device kinds' rows, then the client's own, later rows winning
        for kind, rows in self.trace.by_device.items():
            active = [r for r in rows if r.t_start_s <= t_s < r.t_end_s]
            if active:
                if self._kinds is None:
                    self._kinds = np.asarray(self.devices)
                rows_of_kind = np.flatnonzero(self._kinds[ids] == kind)
                for r in active:
                    _set(table, rows_of_kind, r.values)
        own = self.trace.by_partition
        if own:
            asked = ids
            for i in np.flatnonzero(np.isin(asked, np.fromiter(own, dtype=np.int64, count=len(own)))):
                for r in own[int(asked[i])]:
                    if r.t_start_s <= t_s < r.t_end_s:
                        _set(table, np.array([i]), r.values)
        return table

    def factors(self, partition_id: int, t_s: float) -> Factors:
        f = self.model.factors(partition_id, t_s)
        if self.trace is None:
            return f
        v = self.trace.values(partition_id, self.devices[partition_id], t_s)
        if not v:
            return f
        return Factors(bool(v.get("available", float(f.available)) >= 0.5), v.get("speed_factor", f.speed_factor),
                       v.get("select_share", f.select_share), v.get("bandwidth_factor", f.bandwidth_factor))


def _set(table: FactorTable, rows: np.ndarray, values: Mapping[str, float]) -> None:
    """A trace row's values on ``rows`` of ``table`` (``available``: a value >= 0.5 is on)."""
    for name, v in values.items():
        if name == "available":
            table.available[rows] = v >= 0.5
        else:
            getattr(table, name)[rows] = v


MODELS: dict[str, type] = {"diurnal": DiurnalDynamics, "random-walk": RandomWalkDynamics}


def build_dynamics(kind: str, options: Mapping[str, Any], seed: int, devices: Sequence[str],
                   trace_path: str | None = None) -> FleetDynamics:
    """``fleet.dynamics`` + options (+ ``fleet.trace``) for a fleet of ``devices``; options are
    checked against the model (unknown: one line with a did-you-mean)."""
    from fedtitan.plugins import check_options

    if kind == "static":
        if options:
            raise ConfigError(f"config fleet.dynamics_options: 'static' dynamics take no options (got {', '.join(options)})")
        model: Dynamics = StaticDynamics()
    elif kind in MODELS:
        cls = MODELS[kind]
        check_options(cls, options, "fleet.dynamics_options", kind, reserved={"seed": "it is the run's seed"})
        try:
            model = cls(seed=seed, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config fleet.dynamics_options: {exc}") from None
        _check_ranges(kind, model)
    else:
        raise ConfigError(f"config fleet.dynamics: unknown value {kind!r}; choose static, diurnal or random-walk"
                          f"{did_you_mean(kind, ['static', *MODELS])}")
    trace = load_trace(trace_path, devices) if trace_path else None
    return FleetDynamics(model, devices, trace)


def _check_ranges(kind: str, model: Any) -> None:
    for name in ("availability", "select_share", "speed", "bandwidth"):
        lo, hi = getattr(model, f"{name}_min", None), getattr(model, f"{name}_max", None)
        if lo is None or hi is None:
            continue
        top = 1.0 if name in ("availability", "select_share") else 100.0
        if not (0 <= lo <= hi <= top) or (name in ("speed", "bandwidth") and lo <= 0):
            raise ConfigError(f"config fleet.dynamics_options: {kind} needs 0 {'<=' if top == 1.0 else '<'} "
                              f"{name}_min <= {name}_max <= {top:g}, got {lo} and {hi}")
    for name in ("period_s", "slot_s", "step_s"):
        v = getattr(model, name, None)
        if v is not None and not v > 0:
            raise ConfigError(f"config fleet.dynamics_options: {name} must be > 0, got {v}")
    for name in ("p_leave", "p_return"):
        v = getattr(model, name, None)
        if v is not None and not 0 <= v <= 1:
            raise ConfigError(f"config fleet.dynamics_options: {name} must be in [0, 1], got {v}")


__all__ = ["FACTOR_COLUMNS", "STATIC", "DiurnalDynamics", "Dynamics", "Factors", "FleetDynamics", "RandomWalkDynamics",
           "StaticDynamics", "Trace", "build_dynamics", "load_trace", "trace_summary"]
