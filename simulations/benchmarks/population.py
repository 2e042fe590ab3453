"""Populations of 100 to 1,000,000 virtual clients at the cost of the sampled ones; prints one JSON object.

    python -m simulations.benchmarks.population [--populations 100,1000,10000,100000 --rounds 4]
    python -m simulations.benchmarks.population --dynamics diurnal   # a living fleet
    python -m simulations.benchmarks.population --populations 100,1000000 --dynamics random-walk

Each population runs as ``fedtitan run`` (Flower's engine on Ray, the pool of simulation
workers) with 20 clients sampled a round, on one generated dataset that serves every
population: 8x8 images of 10 classes (class means plus noise, uint8, stored uncompressed),
``--samples-per-client`` (10) for each client of the largest population and at least
1,100,000 (70 MB: 100,000 clients then hold 11 samples each and 100 hold 11,000 each; for
1,000,000 clients 10,000,000 images, 640 MB, and 100 clients hold 100,000 each). IID
partition, the ``quickstart`` MLP and random selection. Measured from outside, in one go:

- ``startup_s``: the run's wall time minus its rounds' (Ray, data, partition, shutdown);
- ``first_round_s``: round 1's wall time (the client processes' set-up, and a living fleet's
  first look at every client);
- ``round_wall_s``: median wall time of rounds 2.. (round 1 warms the worker processes);
- ``peak_pss_mb``: peak proportional set size of the run's whole process tree (driver, Ray,
  workers): a page shared by k processes (the memory-mapped dataset, shared libraries) counts
  1/k in each, so the tree's sum counts it once. The tree's RSS is sampled at 5 Hz and its PSS
  read whenever RSS has grown 2% since the last read (a PSS read costs the run's CPU; see
  :func:`peak_tree_memory`);
- ``peak_rss_mb``: the same for resident memory, which counts a shared page in every process
  that maps it (the figure reported before; where the system has no PSS, it stands in for it).
  Client state lives on disk and is not counted;
- ``run_folder_mb``: the run folder at the end (``partition.csv``, checkpoints, client states).

``round_wall_ratio`` = round wall at the largest population / at the smallest (target <= 1.5),
``memory_ratio`` likewise for peak PSS (target <= 1.5; ``memory_ratio_rss`` for RSS),
``startup_s_largest`` (target <= 60).
``other_processes_cpus``: the CPUs other processes kept busy meanwhile, with a ``warning`` above
0.1 (:mod:`simulations.benchmarks.machine`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import psutil

from simulations.benchmarks.machine import OtherLoad, report


def make_dataset(path: Path, n_train: int = 1_100_000, n_test: int = 10_000, seed: int = 0,
                 chunk: int = 1 << 20) -> None:
    """The generated npz (uncompressed, so a run memory-maps its images). The noise is drawn
    ``chunk`` rows at a time (the same draws as all at once), so 10,000,000 images need about
    1 GB while they are made, not 5."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(40, 215, size=(10, 64))
    y = rng.integers(0, 10, n_train + n_test)
    x = np.empty((len(y), 64), dtype=np.uint8)
    for at in range(0, len(y), chunk):
        part = means[y[at:at + chunk]] + rng.normal(0, 40, size=(len(y[at:at + chunk]), 64))
        x[at:at + chunk] = np.clip(part, 0, 255).astype(np.uint8)
    images = x.reshape(-1, 1, 8, 8)
    np.savez(path, x=images[:n_train], y=y[:n_train], x_test=images[n_train:], y_test=y[n_train:], num_classes=10)


def _holds(path: Path, n_train: int) -> bool:
    """Whether the npz at ``path`` is a generated dataset of ``n_train`` training images."""
    try:
        with np.load(path) as z:
            return bool(z["y"].shape == (n_train,))
    except (OSError, ValueError, KeyError):
        return False


def tree_memory(procs: list[psutil.Process]) -> tuple[int, int]:
    """(RSS, PSS) summed over ``procs`` in bytes; PSS is RSS where the system has none."""
    rss = pss = 0
    for p in procs:
        try:
            full = p.memory_full_info()
        except psutil.AccessDenied:
            try:
                full = p.memory_info()
            except psutil.Error:
                continue
        except psutil.Error:
            continue
        rss += full.rss
        pss += getattr(full, "pss", full.rss)
    return rss, pss


def tree_rss(procs: list[psutil.Process]) -> int:
    """RSS summed over ``procs`` in bytes (``/proc/PID/statm``: cheap, unlike PSS)."""
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def peak_tree_memory(pid: int, stop: threading.Event, out: list[tuple[int, int]], period_s: float = 0.2,
                     list_every_s: float = 1.0, pss_step: float = 0.02, pss_every_s: float = 2.0) -> None:
    """Sample the tree under ``pid`` at 5 Hz until ``stop``; append its peak (RSS, PSS) to ``out``.

    The sampler must not slow what it measures: PSS (``smaps``) costs about 5 ms of CPU a
    process, 50 ms for a Ray run's ten, which at 5 Hz took a quarter of a core from a 2-core
    machine whose cores the run's workers kept busy (a small model's Ray round read 0.26-0.28 s
    sampled so, 0.16-0.20 s unsampled). So RSS is read every tick, PSS only when the tree's RSS
    is ``pss_step`` (2%) above where PSS was last read (the peaks go together: PSS <= RSS, and
    both grow with what the run holds) and at most once every ``pss_every_s`` (2 s), and the
    tree's processes are listed once a second (a walk of /proc). Per tick outside those: a
    ``statm`` read a process. (A run's start grows its RSS on every tick: reading PSS each time,
    50-90 ms of CPU a read for a Ray run's tree, took about a second from an 8-second start on 2
    cores. A peak held for less than ``pss_every_s`` may be missed by PSS, never by RSS.)"""
    peak_rss = peak_pss = 0
    read_at = -1  # the tree RSS at the last PSS read
    pss_at = -math.inf  # and when
    procs: list[psutil.Process] = []
    listed = -math.inf
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.wait(period_s):
        now = time.monotonic()
        if now - listed >= list_every_s:
            try:
                procs, listed = [root, *root.children(recursive=True)], now
            except psutil.Error:
                break
        rss = tree_rss(procs)
        peak_rss = max(peak_rss, rss)
        if rss > read_at * (1 + pss_step) and now - pss_at >= pss_every_s:
            _, pss = tree_memory(procs)
            read_at, pss_at, peak_pss = rss, now, max(peak_pss, pss)
    out.append((peak_rss, peak_pss))


def measured(cmd: list[str], what: str) -> tuple[float, float, float, str]:
    """Run ``cmd``; its wall seconds, its process tree's peak resident memory and peak PSS in MB
    (sampled at 5 Hz) and its stdout. A failure ends the benchmark with one line naming ``what``."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), cast(list[tuple[int, int]], [])
    watcher = threading.Thread(target=peak_tree_memory, args=(proc.pid, stop, peak), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {err[-1500:]}")
    rss, pss = (peak[0][0] / 2**20, peak[0][1] / 2**20) if peak else (float("nan"), float("nan"))
    return wall, rss, pss, out


def run_population(clients: int, data: Path, rounds: int, out: Path, dynamics: str = "static") -> dict[str, float]:
    overrides = ["data.dataset=npz", f"data.path={data}", "data.partition=iid", f"data.num_clients={clients}",
                 "data.min_samples=1", f"server.fraction={20 / clients}", f"run.rounds={rounds}",
                 "selection.method=rs", "server.eval_samples=1000", "fleet.variation=0", f"fleet.dynamics={dynamics}"]
    cmd = [sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(out),
           *[a for o in overrides for a in ("--set", o)]]
    total, rss, pss, _ = measured(cmd, f"population {clients}: fedtitan run")
    rnds = pd.read_csv(out / "rounds.csv")
    return {"clients": clients, "startup_s": round(total - float(rnds.wall_s.sum()), 2),
            "first_round_s": round(float(rnds.wall_s.iloc[0]), 3),
            "round_wall_s": round(float(rnds.wall_s.iloc[1:].median()), 3),
            "peak_pss_mb": round(pss, 1), "peak_rss_mb": round(rss, 1),
            "sampled_per_round": int(rnds.clients_sampled.median()),
            "run_folder_mb": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--populations", default="100,1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dynamics", default="static", choices=["static", "diurnal", "random-walk"],
                    help="fleet.dynamics of every run (a living fleet: every client's state each round)")
    ap.add_argument("--samples-per-client", type=int, default=10,
                    help="training images per client of the largest population (at least 1,100,000 in all)")
    ap.add_argument("--data", type=Path, default=None,
                    help="keep the generated npz here and reuse it when it is there (10,000,000 images take "
                         "about a minute to make)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.populations.split(",")]
    n_train = max(1_100_000, args.samples_per_client * max(sizes))
    with tempfile.TemporaryDirectory() as tmp, OtherLoad() as load:
        data = args.data or Path(tmp) / "population.npz"
        if args.data is None or not data.exists() or not _holds(data, n_train):
            make_dataset(data, n_train=n_train)
        rows = [run_population(n, data, args.rounds, Path(tmp) / f"run-{n}", args.dynamics) for n in sizes]
    small, large = rows[0], rows[-1]
    print(json.dumps({
        "data": f"generated npz: {n_train:,} 8x8 uint8 images, 10 classes, IID partition; quickstart MLP, rs",
        "dynamics": args.dynamics,
        "populations": rows, "largest": large["clients"],
        "round_wall_ratio": round(large["round_wall_s"] / small["round_wall_s"], 3),
        "memory_ratio": round(large["peak_pss_mb"] / small["peak_pss_mb"], 3),
        "memory_ratio_rss": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "startup_s_largest": large["startup_s"],
        "targets": {"round_wall_ratio": 1.5, "memory_ratio": 1.5, "startup_s_largest": 60}, **report(load),
    }))


if __name__ == "__main__":
    main()
