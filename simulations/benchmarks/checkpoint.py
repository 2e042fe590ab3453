"""What a checkpoint after every round costs at the papers' scale; prints one JSON object.

    python -m simulations.benchmarks.checkpoint [--preset titan-fl-cifar10 --rounds 6 --engine ray]

Runs the preset (``titan-fl-cifar10``: MobileNetV1, 50 CIFAR-10 clients, 10 a round) for
``--rounds`` rounds with ``run.checkpoint_every=1`` and reads its rounds.csv, where every
round records ``checkpoint_s`` (storing the clients' new states + writing the server's
checkpoint, fsync included) and ``checkpoint_bytes``. Figures, all from this one run:

- ``checkpoint_share_median`` / ``_max``: checkpoint_s / the round's wall time (target <= 0.05);
- ``checkpoint_mb_median``: what a round writes; ``disk_mb_end``: the run's checkpoints folder at
  the end (two server checkpoints + the newest states: bounded, it does not grow with rounds);
- ``state_travel_ms_per_client``: packing + unpacking one client's state (what travels with the
  train message and the reply, timed here on a state from the run), against
  ``round_wall_s_median`` / clients per round;
- ``round_overhead_ratio_median``: a round's wall time / its compute floor, the floor being the
  sampled clients' own wall time (``clients.csv`` ``wall_s``: the client round as measured
  inside the worker, one torch thread) spread over the client processes, i.e. what the same
  client work costs with no engine, no messages and no server.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd


def client_work_s(clients: pd.DataFrame) -> pd.Series:
    """Each round's client work as its clients measured it, by ``server_round``: the sum of
    ``clients.csv``'s ``wall_s`` over the round's clients (each client round timed inside its
    worker). A round's compute floor is this over the client processes running at once (one
    for the local engine); ``simulations.gpu`` reports it as it is."""
    return clients.groupby("server_round").wall_s.sum()


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="titan-fl-cifar10")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--engine", default="ray", choices=["ray", "local"])
    ap.add_argument("--data-dir", default=os.environ.get("FEDTITAN_SHARED_DATA"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from fedtitan.checkpoint import ClientStateStore, pack, unpack
    from fedtitan.config import load_config
    from simulations.run import run

    overrides = [f"run.rounds={args.rounds}", f"simulation.engine={args.engine}", "run.checkpoint_every=1",
                 *([f"data.data_dir={args.data_dir}"] if args.data_dir else []), *args.set]
    cfg = load_config(args.preset, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        run(cfg, out, quiet=True)
        total_s = time.perf_counter() - t0
        rounds = pd.read_csv(out / "rounds.csv")
        share = rounds.checkpoint_s / rounds.wall_s
        processes = max(1, int((os.cpu_count() or 1) // cfg.simulation.num_cpus)) if args.engine == "ray" else 1
        floor = client_work_s(pd.read_csv(out / "clients.csv")) / processes
        overhead = rounds.set_index("server_round").wall_s / floor
        store = ClientStateStore(out / "checkpoints" / "clients")
        pid = int(pd.read_csv(out / "clients.csv").partition_id.iloc[-1])
        blob = store.read(pid, store.rounds(pid)[-1])
        t1 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            pack(unpack(blob))
        travel_ms = (time.perf_counter() - t1) / reps * 1e3
        result = {
            "preset": args.preset, "engine": args.engine, "rounds": int(len(rounds)),
            "clients_per_round": int(rounds.clients_sampled.median()),
            "round_wall_s_median": round(float(rounds.wall_s.median()), 3),
            "checkpoint_s_median": round(float(rounds.checkpoint_s.median()), 4),
            "checkpoint_s_max": round(float(rounds.checkpoint_s.max()), 4),
            "checkpoint_share_median": round(float(share.median()), 4),
            "checkpoint_share_max": round(float(share.max()), 4),
            "checkpoint_mb_median": round(float(rounds.checkpoint_bytes.median()) / 2**20, 2),
            "server_checkpoint_mb": round(max(p.stat().st_size for p in (out / "checkpoints").glob("round-*.npz"))
                                          / 2**20, 2),
            "client_state_kb": round(len(blob) / 2**10, 1),
            "state_travel_ms_per_client": round(travel_ms, 2),
            "disk_mb_end": round(_folder_mb(out / "checkpoints"), 1),
            "compute_floor_s_median": round(float(floor.median()), 3),
            "round_overhead_ratio_median": round(float(overhead.median()), 3),
            "target_share": 0.05, "total_wall_s": round(total_s, 1),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
