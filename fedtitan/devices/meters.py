"""Meters: how long a piece of work took and how much energy it used.

* :class:`SimulatedMeter` reports what the cost model predicts;
* :class:`MeasuredMeter` measures wall-clock time and, where the machine exposes it, energy:
  x86 RAPL counters (``/sys/class/powercap``, with wrap-around), Jetson INA3221 power rails
  (hwmon layout of JetPack 5/6, the older iio layout of JetPack 4), or jtop when installed.
  Where no energy source is readable, energy is ``None`` (reported as unavailable), never
  a made-up number.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Measurement:
    time_s: float
    energy_j: float | None
    source: str  # "simulated", "rapl", "ina3221", "ina3221-iio", "jtop", "none"


def _read_number(path: str | Path) -> float | None:
    try:
        return float(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


class EnergyCounter(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> float | None: ...


class RaplCounter:
    """Package-level RAPL energy counters; handles wrap at ``max_energy_range_uj``."""

    name = "rapl"

    def __init__(self, root: str | Path = "/sys/class/powercap") -> None:
        self.zones = sorted(
            z for z in glob.glob(os.path.join(str(root), "intel-rapl:*"))
            if os.path.basename(z).count(":") == 1 and _read_number(os.path.join(z, "energy_uj")) is not None
        )
        self._start: list[float] = []

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def _read(self) -> list[float | None]:
        return [_read_number(os.path.join(z, "energy_uj")) for z in self.zones]

    def start(self) -> None:
        self._start = [v if v is not None else 0.0 for v in self._read()]

    def stop(self) -> float | None:
        total = 0.0
        for zone, before, after in zip(self.zones, self._start, self._read(), strict=True):
            if after is None:
                return None
            delta = after - before
            if delta < 0:
                wrap = _read_number(os.path.join(zone, "max_energy_range_uj"))
                if wrap is None:
                    return None
                delta += wrap
            total += delta
        return total / 1e6


class _SampledPower:
    """Integrates a power reading (W) sampled by a background thread (trapezoid rule)."""

    name = "sampled"
    interval_s = 0.05

    def power_w(self) -> float | None:
        raise NotImplementedError

    def start(self) -> None:
        self._energy = 0.0
        self._ok = True
        self._stop = threading.Event()
        self._last = (time.perf_counter(), self.power_w())
        self._thread = threading.Thread(target=self._run, name=f"fedtitan-{self.name}", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        now, p = time.perf_counter(), self.power_w()
        t0, p0 = self._last
        if p is None or p0 is None:
            self._ok = False
        else:
            self._energy += 0.5 * (p + p0) * (now - t0)
        self._last = (now, p)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self._energy if self._ok else None


class Ina3221Counter(_SampledPower):
    """Jetson INA3221 rails: hwmon (``in*_input`` mV x ``curr*_input`` mA, JetPack 5/6) or iio
    (``in_power*_input`` mW, JetPack 4)."""

    def __init__(self, root: str | Path = "/sys") -> None:
        r = str(root)
        self.hwmon = sorted(glob.glob(f"{r}/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"))
        self.iio = sorted(glob.glob(f"{r}/bus/i2c/drivers/ina3221x/*/iio:device*"))
        self.name = "ina3221" if self.hwmon else "ina3221-iio"
        self.rails: list[tuple[str, str | None]] = []
        for d in self.hwmon:
            for volt in sorted(glob.glob(f"{d}/in[0-9]_input")):
                ch = os.path.basename(volt)[2:].split("_")[0]  # "in1_input" -> "1"
                curr = f"{d}/curr{ch}_input"
                if os.path.exists(curr):
                    self.rails.append((volt, curr))
        if not self.hwmon:
            for d in self.iio:
                self.rails += [(p, None) for p in sorted(glob.glob(f"{d}/in_power[0-9]_input"))]

    @property
    def available(self) -> bool:
        return bool(self.rails) and self.power_w() is not None

    def power_w(self) -> float | None:
        total = 0.0
        for a, b in self.rails:
            va = _read_number(a)
            if va is None:
                return None
            if b is None:
                total += va / 1e3  # mW
            else:
                vb = _read_number(b)
                if vb is None:
                    return None
                total += va * vb / 1e6  # mV * mA
        return total


class JtopCounter(_SampledPower):
    name = "jtop"

    def __init__(self) -> None:
        from jtop import jtop

        self._jtop = jtop()
        self._jtop.start()

    @property
    def available(self) -> bool:
        return bool(self._jtop.ok())

    def power_w(self) -> float | None:
        try:
            return float(self._jtop.power["tot"]["power"]) / 1e3
        except (KeyError, TypeError, ValueError):
            return None


def detect_counter(sys_root: str | Path = "/sys") -> EnergyCounter | None:
    """The first readable energy source: INA3221 (Jetson), RAPL (x86), jtop; else None."""
    ina = Ina3221Counter(sys_root)
    if ina.available:
        return ina
    rapl = RaplCounter(Path(sys_root) / "class" / "powercap")
    if rapl.available:
        return rapl
    try:
        jt = JtopCounter()
        if jt.available:
            return jt
    except Exception:  # jtop missing or its service not running
        pass
    return None


class MeasuredMeter:
    """Wall clock plus the detected energy counter (or none)."""

    def __init__(self, counter: EnergyCounter | None = None, sys_root: str | Path = "/sys",
                 detect: bool = True) -> None:
        self.counter = counter if counter is not None or not detect else detect_counter(sys_root)

    def __enter__(self) -> MeasuredMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = self.stop()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        if self.counter is not None:
            self.counter.start()

    def stop(self) -> Measurement:
        energy = self.counter.stop() if self.counter is not None else None
        elapsed = time.perf_counter() - self._t0
        source = self.counter.name if self.counter is not None and energy is not None else "none"
        return Measurement(elapsed, energy, source)


class SimulatedMeter:
    """Reports the cost model's prediction (given by the caller) as a measurement."""

    def measure(self, time_s: float, energy_j: float) -> Measurement:
        return Measurement(time_s, energy_j, "simulated")
