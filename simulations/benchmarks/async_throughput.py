"""Client updates per wall second: the asynchronous loop against synchronous rounds on the same model; one JSON object.

    python -m simulations.benchmarks.async_throughput [--engines ray,local] [--clients 20] [--updates 60]

The quickstart preset (its MLP and data), ``--clients`` clients, random selection. Synchronous:
half the clients a round, wait-all. Asynchronous: as many in flight as a round samples, K = half
of them, with new clients sent as soon as one slot is free (``dispatch_threshold = 1``,
FedBuff's) and once K slots are free (``= K``). Each run trains about ``--updates`` client
updates; ``updates_per_s`` = the rows of its clients.csv after its first step / the sum of
those steps' ``wall_s`` (the loop's own time once the client processes are warm: a first step
loads data and builds models), ``updates_per_s_all`` the same over every step. An asynchronous
run also trains the clients still in flight at its end (their updates never arrive): that work
is in its wall time and not in its updates. ``ratio`` = synchronous / asynchronous (issue 43's target:
<= 1.2). ``other_processes_cpus`` flags a machine that was not quiet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from simulations.benchmarks.machine import OtherLoad, report


def _run(out: Path, overrides: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(out),
           *[a for o in overrides for a in ("--set", o)]]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"fedtitan run {' '.join(overrides)} failed: {res.stderr[-1500:]}")
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    wall = float(rounds.wall_s.sum())
    first = rounds.server_round.iloc[0]
    steady = len(clients[clients.server_round != first]) / float(rounds.wall_s.iloc[1:].sum())
    return {"updates": len(clients), "steps": len(rounds), "loop_wall_s": round(wall, 3),
            "updates_per_s_all": round(len(clients) / wall, 2), "updates_per_s": round(steady, 2),
            "virtual_time_s": round(float(rounds.virtual_time_s.iloc[-1]), 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="ray,local")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--updates", type=int, default=100)
    args = ap.parse_args(argv)
    per_round = max(2, args.clients // 2)
    k = max(1, per_round // 2)
    base = [f"data.num_clients={args.clients}", "server.fraction=0.5", "selection.method=rs", "server.eval_every=1000"]
    out: dict[str, Any] = {"clients": args.clients, "in_flight": per_round, "buffer_size": k}
    with OtherLoad() as load, tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            eng = [*base, f"simulation.engine={engine}"]
            sync = _run(Path(tmp) / f"{engine}-sync", [*eng, f"run.rounds={max(1, args.updates // per_round)}"])
            row: dict[str, Any] = {"sync": sync}
            for threshold in (1, k):
                a = _run(Path(tmp) / f"{engine}-async-{threshold}",
                         [*eng, "server.mode=async", f"server.async.buffer_size={k}",
                          f"server.async.dispatch_threshold={threshold}", f"run.rounds={max(1, args.updates // k)}"])
                row[f"async_threshold_{threshold}"] = {**a, "ratio": round(sync["updates_per_s"] / a["updates_per_s"], 3)}
            out[engine] = row
    out.update(report(load))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
