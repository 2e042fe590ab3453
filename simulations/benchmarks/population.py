"""Populations of 100 to 100,000 virtual clients at the cost of the sampled ones; prints one JSON object.

    python -m simulations.benchmarks.population [--populations 100,1000,10000,100000 --rounds 4]
    python -m simulations.benchmarks.population --dynamics diurnal   # a living fleet

Each population runs as ``fedtitan run`` (Flower's engine on Ray, the pool of simulation
workers) with 20 clients sampled a round, on one generated dataset that serves every
population: 1,100,000 8x8 images of 10 classes (class means plus noise, uint8, 70 MB; IID
partition, so 100,000 clients hold 10 samples each and 100 hold 10,000 each), the
``quickstart`` MLP and random selection. Measured from outside, in one go:

- ``startup_s``: the run's wall time minus its rounds' (Ray, data, partition, shutdown);
- ``round_wall_s``: median wall time of rounds 2.. (round 1 warms the worker processes);
- ``peak_rss_mb``: peak resident memory of the run's whole process tree (driver, Ray,
  workers), sampled at 5 Hz. Client state lives on disk and is not counted.

``round_wall_ratio`` = round wall at the largest population / at the smallest (target <= 1.5),
``memory_ratio`` likewise for peak memory (target <= 1.5), ``startup_s_largest`` (target <= 60).
``other_processes_cpus``: the CPUs other processes kept busy meanwhile, with a ``warning`` above
0.1 (:mod:`simulations.benchmarks.machine`).
"""

from __future__ import annotations

import argparse
import json
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


def make_dataset(path: Path, n_train: int = 1_100_000, n_test: int = 10_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    means = rng.uniform(40, 215, size=(10, 64))
    y = rng.integers(0, 10, n_train + n_test)
    x = np.clip(means[y] + rng.normal(0, 40, size=(len(y), 64)), 0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    np.savez(path, x=x[:n_train], y=y[:n_train], x_test=x[n_train:], y_test=y[n_train:], num_classes=10)


def peak_tree_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    peak = 0
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.wait(0.2):
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
    out.append(peak)


def measured(cmd: list[str], what: str) -> tuple[float, float, str]:
    """Run ``cmd``; its wall seconds, its process tree's peak resident memory in MB (sampled at
    5 Hz) and its stdout. A failure ends the benchmark with one line naming ``what``."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), cast(list[int], [])
    watcher = threading.Thread(target=peak_tree_rss, args=(proc.pid, stop, peak), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {err[-1500:]}")
    return wall, (peak[0] / 2**20 if peak else float("nan")), out


def run_population(clients: int, data: Path, rounds: int, out: Path, dynamics: str = "static") -> dict[str, float]:
    overrides = ["data.dataset=npz", f"data.path={data}", "data.partition=iid", f"data.num_clients={clients}",
                 "data.min_samples=1", f"server.fraction={20 / clients}", f"run.rounds={rounds}",
                 "selection.method=rs", "server.eval_samples=1000", "fleet.variation=0", f"fleet.dynamics={dynamics}"]
    cmd = [sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(out),
           *[a for o in overrides for a in ("--set", o)]]
    total, peak, _ = measured(cmd, f"population {clients}: fedtitan run")
    rnds = pd.read_csv(out / "rounds.csv")
    return {"clients": clients, "startup_s": round(total - float(rnds.wall_s.sum()), 2),
            "round_wall_s": round(float(rnds.wall_s.iloc[1:].median()), 3),
            "peak_rss_mb": round(peak, 1), "sampled_per_round": int(rnds.clients_sampled.median())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--populations", default="100,1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dynamics", default="static", choices=["static", "diurnal", "random-walk"],
                    help="fleet.dynamics of every run (a living fleet: every client's state each round)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.populations.split(",")]
    with tempfile.TemporaryDirectory() as tmp, OtherLoad() as load:
        data = Path(tmp) / "population.npz"
        make_dataset(data)
        rows = [run_population(n, data, args.rounds, Path(tmp) / f"run-{n}", args.dynamics) for n in sizes]
    small, large = rows[0], rows[-1]
    print(json.dumps({
        "data": "generated npz: 1,100,000 8x8 uint8 images, 10 classes, IID partition; quickstart MLP, rs",
        "dynamics": args.dynamics,
        "populations": rows, "largest": large["clients"],
        "round_wall_ratio": round(large["round_wall_s"] / small["round_wall_s"], 3),
        "memory_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "startup_s_largest": large["startup_s"],
        "targets": {"round_wall_ratio": 1.5, "memory_ratio": 1.5, "startup_s_largest": 60}, **report(load),
    }))


if __name__ == "__main__":
    main()
