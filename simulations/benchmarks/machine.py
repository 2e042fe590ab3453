"""Is the machine otherwise idle while a benchmark measures? Ratios such as ``floor_ratio`` are
only comparable when nothing else runs: one CPU-bound job beside the 6-round
``titan-fl-cifar10`` benchmark on 2 cores moved its ratio from about 1.2 to about 1.5."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import psutil

# Other processes' CPUs above which a benchmark's figures are flagged as not comparable.
BUSY_CPUS = 0.1


def wait_quiet(busy_cpus: float = BUSY_CPUS, max_s: float = 30.0, window_s: float = 0.5) -> float:
    """Wait until the whole machine keeps fewer than ``busy_cpus`` CPUs busy over ``window_s``
    (at most ``max_s``); returns the seconds waited. Between two measured runs: a Ray run's
    processes take a few seconds to end after its driver does, and a run measured meanwhile
    shares the CPUs with them (the small-model benchmark's local engine read 0.29 s a round
    right after the Ray run, 0.24 s on its own)."""
    t0 = time.perf_counter()
    psutil.cpu_percent(interval=None)
    while time.perf_counter() - t0 < max_s:
        if psutil.cpu_percent(interval=window_s) / 100 * (psutil.cpu_count() or 1) < busy_cpus:
            break
    return round(time.perf_counter() - t0, 2)


class OtherLoad:
    """CPU used by processes outside ``root``'s tree (by default this process and its
    descendants, Ray's workers included) while the ``with`` block runs, sampled every
    ``interval`` seconds. ``cpus`` is the mean number of CPUs they kept busy. A process once
    seen in the tree stays ours after it leaves it (Ray's workers outlive their driver for a
    moment); a process that starts and ends between two samples goes unseen."""

    def __init__(self, interval: float = 1.0, root: int | None = None) -> None:
        self.interval = interval
        self.root = root if root is not None else os.getpid()
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.by_process: dict[str, float] = {}  # "pid command" -> CPU seconds
        self._last: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds at the last look
        self._ours: set[tuple[int, float]] = set()  # every process seen in the tree
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> set[int]:
        try:
            root = psutil.Process(self.root)
            return {self.root, *(p.pid for p in root.children(recursive=True))}
        except psutil.Error:
            return {self.root}

    def _look(self, first: bool) -> None:
        tree = self._tree()
        for p in psutil.process_iter(["create_time", "cmdline", "name"]):
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            used = t.user + t.system
            key = (p.pid, p.info["create_time"] or 0.0)
            before = self._last.get(key)
            self._last[key] = used
            if p.pid in tree:  # ours for good: a Ray worker that outlives its driver leaves the tree
                self._ours.add(key)
            if key in self._ours:
                continue
            if before is None:  # there when the block began: count from now; started since: all of it
                before = used if first or (p.info["create_time"] or 0.0) < self._t0 else 0.0
            if used > before:
                self.cpu_s += used - before
                who = f"{p.pid} {' '.join(p.info['cmdline'] or []) or p.info['name']}"[:80].strip()
                self.by_process[who] = self.by_process.get(who, 0.0) + used - before

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._look(first=False)

    @property
    def cpus(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def __enter__(self) -> OtherLoad:
        self._t0 = time.time()
        self._w0 = time.perf_counter()
        self._look(first=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._look(first=False)
        self.wall_s = time.perf_counter() - self._w0


def report(load: OtherLoad) -> dict[str, Any]:
    """The fields a benchmark's JSON gets, with a warning (also on stderr) when the machine was busy."""
    out: dict[str, Any] = {"other_processes_cpus": round(load.cpus, 3)}
    if load.cpus > BUSY_CPUS:
        top = sorted(load.by_process.items(), key=lambda kv: -kv[1])[:3]
        busiest = "; ".join(f"{who} ({cpu / load.wall_s:.2f})" for who, cpu in top)
        msg = (f"other processes kept {load.cpus:.2f} of this machine's {os.cpu_count()} CPUs busy during the "
               f"measurement (busiest: {busiest}); its ratios are not comparable; stop them and run again")
        out["warning"] = msg
        print(f"warning: {msg}", file=sys.stderr)
    return out
