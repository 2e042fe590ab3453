"""Asynchronous against synchronous aggregation on a straggler-heavy fleet: virtual time and energy to a target accuracy.

    python -m simulations.papers.async_study --out sweeps/async-study [--seeds 3] [--target 0.85]
    python -m simulations.papers.async_study --out sweeps/async-study --tables-only   # re-read finished sweeps

One sweep per setting (each ``--grid selection.method=titan,rs --seeds N``, resumable), all on
the quickstart data and MLP with 30 clients and the straggler-heavy fleet below, the same
number of client updates for every setting (``--updates``, default 240):

* ``sync-wait-all``, ``sync-deadline`` (the deadline: the fleet's median client duration,
  measured from the wait-all runs), ``sync-first-k`` (over-commit 0.3): 12 clients a round;
* ``fedbuff-c12``: 12 in flight, K = 6, polynomial staleness (FedBuff's defaults);
  ``fedasync-c12``: 12 in flight, K = 1, polynomial staleness;
* the concurrency sweep: ``fedbuff-c6`` and ``fedbuff-c24`` (K = half the concurrency);
* the control, a fleet without stragglers (Orin Nanos only, no variation): ``uniform-sync-wait-all``
  and ``uniform-fedbuff-c12``.

Prints one markdown table (mean ± 95% interval over seeds of the virtual seconds and joules to
``--target``, how many runs reached it, final accuracy) and writes it with the accuracy-vs-time
figure of both (``async-study-to-target.png``) and the per-run numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from fedtitan.results.analysis import ci95, load_sweep, time_to_accuracy  # noqa: E402
from fedtitan.results.store import atomic_write_text  # noqa: E402
from simulations.papers.markdown import accuracy_pm  # noqa: E402

# a fleet where the slowest devices take several times the fastest's round: two Jetson Nanos at
# 5 W and phones on a 10 Mbit/s uplink beside Orin Nanos, each device 40% off its profile
FLEET = {"fleet.mix": "jetson-nano-5w:0.3,phone-midrange:0.3,orin-nano:0.2,rpi4:0.2", "fleet.variation": 0.4}
BASE = {"data.num_clients": 30, "server.fraction": 0.4, "selection.local_steps": 10, **FLEET}
PER_ROUND = 12
UNIFORM = {"fleet.mix": "orin-nano:1", "fleet.variation": 0.0}


def settings(updates: int, deadline_s: float | None) -> dict[str, dict[str, Any]]:
    rounds = updates // PER_ROUND
    out: dict[str, dict[str, Any]] = {
        "sync-wait-all": {"run.rounds": rounds},
        "sync-first-k": {"run.rounds": rounds, "server.policy": "first-k", "server.over_commit": 0.3},
    }
    if deadline_s is not None:
        out["sync-deadline"] = {"run.rounds": rounds, "server.policy": "deadline", "server.deadline_s": deadline_s}
    for conc, k in ((12, 6), (12, 1), (6, 3), (24, 12)):
        name = f"{'fedasync' if k == 1 else 'fedbuff'}-c{conc}"
        out[name] = {"server.mode": "async", "server.async.concurrency": conc, "server.async.buffer_size": k,
                     "run.rounds": updates // k}
    # the control: a fleet without stragglers (one device kind, no variation), where waiting costs little
    out["uniform-sync-wait-all"] = {**out["sync-wait-all"], **UNIFORM}
    out["uniform-fedbuff-c12"] = {**out["fedbuff-c12"], **UNIFORM}
    return out


def run_setting(out: Path, name: str, overrides: dict[str, Any], seeds: int) -> Path:
    import simulations.api as ft

    folder = out / name
    ft.sweep("quickstart", grid={"selection.method": ["titan", "rs"]}, seeds=seeds,
             overrides={**BASE, **overrides}, out=folder, quiet=True)
    return folder


def median_duration(folder: Path) -> float:
    _, clients, _ = load_sweep(folder)
    return float(clients.sim_time_s.median())


def table(out: Path, names: list[str], target: float) -> tuple[str, pd.DataFrame]:
    rows = []
    for name in names:
        rounds, _, _ = load_sweep(out / name)
        for _run_id, curve in rounds.groupby("run_id"):
            t, e = time_to_accuracy(curve, target)
            first = curve.iloc[0]
            rows.append({"setting": name, "method": first["selection.method"], "seed": int(first["seed"]),
                         "tta_s": t, "energy_to_target_j": e, "final_accuracy": float(curve.accuracy.dropna().iloc[-1]),
                         "virtual_s": float(curve.virtual_time_s.max()), "energy_j": float(curve.energy_cum_j.max())})
    per_run = pd.DataFrame(rows)
    lines = [f"| setting | selection | time to {target:.2f} (virtual s) | energy to {target:.2f} (J) | reached | "
             "final accuracy | whole run (virtual s) |", "|---|---|---|---|---|---|---|"]
    for (name, method), g in per_run.groupby(["setting", "method"], sort=False):
        hit = g.dropna(subset=["tta_s"])
        tta = f"{hit.tta_s.mean():.2f} ± {ci95(hit.tta_s):.2f}" if len(hit) else "never"
        energy = f"{hit.energy_to_target_j.mean():.1f} ± {ci95(hit.energy_to_target_j):.1f}" if len(hit) else "-"
        lines.append(f"| {name} | {method} | {tta} | {energy} | {len(hit)} of {len(g)} | "
                     f"{accuracy_pm(g.final_accuracy.mean(), ci95(g.final_accuracy))} | {g.virtual_s.mean():.2f} |")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, col, label in ((axes[0], "tta_s", f"virtual seconds to {target:.2f}"),
                           (axes[1], "energy_to_target_j", f"joules to {target:.2f}")):
        sns.pointplot(data=per_run, y="setting", x=col, hue="method", errorbar=("ci", 95), dodge=0.4,
                      linestyle="none", ax=ax)
        ax.set(xlabel=label + " (mean over seeds, bootstrap 95% interval)", ylabel="")
    fig.suptitle("Asynchronous vs synchronous aggregation, straggler-heavy fleet (uniform-*: no stragglers)")
    fig.tight_layout()
    fig.savefig(out / "async-study-to-target.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines), per_run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--updates", type=int, default=240)
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--tables-only", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    first = settings(args.updates, None)
    if not args.tables_only:
        run_setting(args.out, "sync-wait-all", first["sync-wait-all"], args.seeds)
    deadline = round(median_duration(args.out / "sync-wait-all"), 4)
    every = settings(args.updates, deadline)
    if not args.tables_only:
        for name, overrides in every.items():
            print(f"{name}: {overrides}", flush=True)
            run_setting(args.out, name, overrides, args.seeds)
    text, per_run = table(args.out, list(every), args.target)
    head = (f"{args.seeds} seeds; {args.updates} client updates a run; deadline {deadline} s (the wait-all runs' "
            f"median client duration); target {args.target}")
    print(head)
    print(text)
    atomic_write_text(args.out / "async-study.md", head + "\n\n" + text + "\n")
    atomic_write_text(args.out / "async-study-runs.csv", per_run.to_csv(index=False))
    atomic_write_text(args.out / "async-study.json", json.dumps({"deadline_s": deadline, "target": args.target,
                                                                 "settings": every}, indent=2))


if __name__ == "__main__":
    main()
