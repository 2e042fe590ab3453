"""The fixed cost of runs and sweeps; prints one JSON object.

    python -m simulations.benchmarks.sweep_overhead [--repeats 1]

Wall time, as a user sees it (a fresh ``fedtitan`` process each time, imports included), of

* one 1-round ``fedtitan run quickstart``,
* a 4-run ``fedtitan sweep quickstart`` of the same (4 seeds, 1 round each, no report),

and ``sweep_ratio`` = sweep / single (target <= 2.0: the sweep pays Ray's start and the
client processes' start once, not once per run). With ``--repeats`` > 1 the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(args: list[str]) -> float:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "simulations.cli", *args], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=900)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    singles, sweeps = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeats):
            singles.append(_timed(["run", "quickstart", "--quiet", "--set", "run.rounds=1", "--out",
                                   str(Path(d) / f"single-{i}")]))
            sweeps.append(_timed(["sweep", "quickstart", "--seeds", str(args.runs), "--quiet", "--no-report",
                                  "--set", "run.rounds=1", "--out", str(Path(d) / f"sweep-{i}")]))
    single, sweep = statistics.median(singles), statistics.median(sweeps)
    print(json.dumps({"single_run_s": round(single, 2), "sweep_runs": args.runs, "sweep_s": round(sweep, 2),
                      "sweep_ratio": round(sweep / single, 2), "per_extra_run_s": round((sweep - single) / (args.runs - 1), 2),
                      "single_runs_s": [round(x, 2) for x in singles], "sweeps_s": [round(x, 2) for x in sweeps],
                      "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
