"""Small models over many clients: fedtitan's round against a plain PyTorch loop; prints one JSON object.

    python -m simulations.benchmarks.small_model [--clients 100000 --rounds 12 --engines ray,local]
    python -m simulations.benchmarks.small_model --variant cnn --clients 10000   # a FEMNIST-sized CNN
    python -m simulations.benchmarks.small_model --breakdown --clients 1000 --rounds 30   # where a client's time goes
    python -m simulations.benchmarks.small_model --pfl-python /tmp/pfl/bin/python   # with pfl-research beside

The workload (``--variant mlp``, the default): generated 8x8 uint8 images of 10 classes (class
means plus noise; 10 samples a client, IID), the ``quickstart`` MLP, random selection with no
candidates to score (``selection.velocity`` = the batch), 20 clients a round, 10 local steps of
batch 10, evaluation only at the last round. ``--variant cnn``: 28x28 grayscale images of 62
classes (FEMNIST's shape) and the zoo's small CNN, otherwise the same.

Run in one go, each in its own process (one tree, measured from outside):

* ``ray``: ``fedtitan run`` on Flower's simulation engine (Ray);
* ``local``: ``fedtitan run --set simulation.engine=local`` (every client in the server's process);
* ``plain``: a plain loop training *the same sampled clients* (read from the ray run's
  ``clients.csv``) on the same partitions with the same steps, batch size and learning rate:
  one model reused, its weights averaged by sample count, no Flower, no state, no records, one
  thread (``--plain-threads``; fedtitan's simulated clients train on ``simulation.num_cpus``
  threads, 1 here, on either engine);
* ``pfl`` (only with ``--pfl-python PY``): the same workload in pfl-research, run under an
  interpreter that has it (:mod:`simulations.benchmarks.pfl_small_model`; pfl is no dependency
  of fedtitan): its own random cohorts of 20, the same model, steps, batch and learning rate,
  on the same thread count as the plain loop. Its ``overhead_ratio`` is against the same plain loop.

Per engine: ``round_wall_s`` (median of rounds 2 to the last but one: round 1 warms up, the last
evaluates), ``startup_s`` (the process's wall time minus its rounds': what the issue's target
reads), ``first_round_s`` (round 1's wall: with Ray, the client processes' own start-up, their
imports and data, falls in it), ``startup_and_first_round_s`` (``startup_s`` plus round 1's
excess over a steady round: what the run costs beyond its rounds at pace), ``peak_rss_mb`` and
``peak_pss_mb`` (the process tree: RSS sampled at 5 Hz, PSS read as RSS grows, so that the
sampling does not take the CPU the run needs; PSS shares the pages processes share, RSS counts
them once for each). ``overhead_ratio`` = the engine's round wall / the plain loop's
(target <= 1.5, issue 42) and ``per_client_overhead_ms`` = their difference per sampled client.
Everything runs ``--repeat`` times (3), every other time in the reverse order; each figure is
the median over the repetitions and ``overhead_ratio`` the median of the repetitions' own
ratios (each against the plain loop of its repetition), listed under ``repetitions``: the
same code's round here varied by a third between runs minutes apart.
``other_processes_cpus`` flags a machine that was not quiet (:mod:`simulations.benchmarks.machine`);
before each run the benchmark waits (``settle_s``, at most 30 s) until the machine is quiet:
a Ray run's processes outlive its driver for a few seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulations.benchmarks.machine import OtherLoad, report, wait_quiet
from simulations.benchmarks.population import measured

CLIENTS_PER_ROUND, STEPS, BATCH, LR = 20, 10, 10, 0.1
# variant: (input shape, classes, model)
VARIANTS: dict[str, tuple[tuple[int, ...], int, str]] = {"mlp": ((1, 8, 8), 10, "mlp"), "cnn": ((1, 28, 28), 62, "cnn")}


def make_data(path: Path, variant: str, n_train: int, n_test: int = 2_000, seed: int = 0) -> None:
    """Class means plus noise, uint8, as ``data.dataset = "npz"`` reads it."""
    shape, classes, _ = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    means = rng.uniform(40, 215, size=(classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, n_train + n_test)
    x = np.empty((len(y), dim), dtype=np.uint8)
    for s in range(0, len(y), 100_000):  # in slices: a float copy of a million 28x28 images is 3 GB
        part = means[y[s:s + 100_000]] + rng.normal(0, 40, size=(len(y[s:s + 100_000]), dim)).astype(np.float32)
        x[s:s + 100_000] = np.clip(part, 0, 255).astype(np.uint8)
    x = x.reshape(-1, *shape)
    np.savez(path, x=x[:n_train], y=y[:n_train], x_test=x[n_train:], y_test=y[n_train:], num_classes=classes)


def overrides(data: Path, variant: str, clients: int, rounds: int) -> list[str]:
    return ["data.dataset=npz", f"data.path={data}", "data.partition=iid", f"data.num_clients={clients}",
            "data.min_samples=1", f"model.name={VARIANTS[variant][2]}", f"server.clients_per_round={CLIENTS_PER_ROUND}",
            f"run.rounds={rounds}", f"server.eval_every={rounds}", "server.eval_samples=1000", "selection.method=rs",
            f"selection.batch_size={BATCH}", f"selection.velocity={BATCH}", f"selection.local_steps={STEPS}",
            f"selection.lr={LR}", "selection.lr_decay=1", "fleet.variation=0"]


def _steady(walls: pd.Series) -> float:
    """Median round wall of rounds 2 to the last but one."""
    w = walls.iloc[1:-1] if len(walls) > 2 else walls
    return float(w.median())


def run_engine(engine: str, ovr: list[str], out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(out),
           *[a for o in [*ovr, f"simulation.engine={engine}"] for a in ("--set", o)]]
    wall, peak, pss, _ = measured(cmd, f"small_model: fedtitan run ({engine} engine)")
    rounds = pd.read_csv(out / "rounds.csv")
    return {**_walls(wall, rounds.wall_s), "peak_rss_mb": round(peak, 1), "peak_pss_mb": round(pss, 1),
            "final_accuracy": round(float(rounds.accuracy.dropna().iloc[-1]), 4)}


def _walls(wall: float, walls: pd.Series) -> dict[str, float]:
    """The round and start-up figures of a process that ran ``wall`` seconds with these rounds."""
    steady = _steady(walls)
    startup = wall - float(walls.sum())
    return {"round_wall_s": round(steady, 4), "startup_s": round(startup, 2),
            "first_round_s": round(float(walls.iloc[0]), 3),
            "startup_and_first_round_s": round(startup + float(walls.iloc[0]) - steady, 2)}


def plain_loop(args: argparse.Namespace) -> None:
    """The child process of ``plain``: the same sampled clients, trained as simply as PyTorch allows."""
    import torch

    from fedtitan.config import load_config
    from fedtitan.training.setup import build_global_model, dataset_for, partition_for

    t0 = time.perf_counter()
    torch.set_num_threads(args.plain_threads)
    cfg = load_config("quickstart", json.loads(args.overrides))
    ds = dataset_for(cfg)
    parts = partition_for(cfg, ds)
    model = build_global_model(cfg, ds)
    sampled = pd.read_csv(Path(args.clients_csv)).groupby("server_round").partition_id.apply(list)
    loss_fn = torch.nn.CrossEntropyLoss()
    glob = [p.detach().clone() for p in model.parameters()]
    rng = np.random.default_rng(0)
    walls = []
    setup_s = time.perf_counter() - t0
    for rnd in sorted(sampled.index):
        r0 = time.perf_counter()
        acc = [torch.zeros_like(p) for p in glob]
        total = 0
        for pid in sampled[rnd]:
            with torch.no_grad():
                for p, g in zip(model.parameters(), glob, strict=True):
                    p.copy_(g)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            idx = parts[pid]
            for _ in range(STEPS):
                batch = rng.choice(idx, size=min(BATCH, len(idx)), replace=False)
                x, y = ds.tensor("train", batch), ds.labels("train", batch)
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
            n = STEPS * BATCH
            total += n
            with torch.no_grad():
                for a, p in zip(acc, model.parameters(), strict=True):
                    a.add_(p, alpha=n)
        glob = [a / total for a in acc]
        walls.append(time.perf_counter() - r0)
    print(json.dumps({"walls": walls, "setup_s": setup_s}))


# (label, module, attribute, the modules that call it by its imported name)
TIMED = (("client_message", "clients.client_app", "_train_one", ()),  # one client (a message may carry several)
         ("client_round", "fedtitan.training.client", "client_round", ("clients.client_app",)),
         ("train_streaming", "fedtitan.training.streaming", "train_streaming", ("fedtitan.training.client",)),
         ("select", "fedtitan.training.streaming", "_select", ()),
         ("train_step", "fedtitan.training.common", "weighted_step", ("fedtitan.training.streaming",)))


def breakdown(ovr: list[str], out: Path) -> dict[str, float]:
    """Where a client's time goes: the local engine run in this process with the client's
    layers timed (perf_counter around each call; a profiler inflates Python-heavy parts
    several-fold), in ms per client over the whole run."""
    import importlib
    from collections import Counter, defaultdict

    import strategies.server as server
    from simulations.api import run

    spent: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()

    def timed(label: str, f: Any) -> Any:
        def inner(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t0
                calls[label] += 1
        return inner

    for label, module, attr, callers in TIMED:
        wrapped = timed(label, getattr(importlib.import_module(module), attr))
        for m in (module, *callers):
            setattr(importlib.import_module(m), attr, wrapped)
    server.FleetServer.collect = timed("collect", server.FleetServer.collect)  # type: ignore[method-assign]
    run("quickstart", overrides=[*ovr, "simulation.engine=local"], out=str(out), quiet=True)
    clients = calls["client_message"]
    ms = {k: 1e3 * spent[k] / clients for k in spent}
    return {"clients_timed": clients, "client_ms": round(ms["collect"], 3),
            "train_steps_ms": round(ms["train_step"], 3), "select_ms": round(ms["select"], 3),
            "client_round_setup_ms": round(ms["client_round"] - ms["train_streaming"], 3),
            "reply_and_state_ms": round(ms["client_message"] - ms["client_round"], 3),
            "engine_messaging_ms": round(ms["collect"] - ms["client_message"], 3)}


def run_pfl(python: str, data: Path, variant: str, clients: int, rounds: int, threads: int) -> dict[str, float]:
    """The same workload run by pfl-research under ``python`` (:mod:`simulations.benchmarks.pfl_small_model`)."""
    script = Path(__file__).with_name("pfl_small_model.py")
    cmd = [python, str(script), "--data", str(data), "--model", VARIANTS[variant][2], "--clients", str(clients),
           "--rounds", str(rounds), "--cohort", str(CLIENTS_PER_ROUND), "--steps", str(STEPS), "--batch", str(BATCH),
           "--lr", str(LR), "--threads", str(threads)]
    wall, peak, pss, out = measured(cmd, "small_model: the pfl-research run")
    got = json.loads(out.strip().splitlines()[-1])
    return {**_walls(wall, pd.Series(got["walls"])), "peak_rss_mb": round(peak, 1), "peak_pss_mb": round(pss, 1),
            "final_accuracy": got["final_accuracy"], "local_epochs": got["epochs"]}


def _has_pfl(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import pfl, torch"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):  # no such interpreter, or not one
        return False


def run_plain(ovr: list[str], clients_csv: Path, threads: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "simulations.benchmarks.small_model", "--plain-child", "--overrides", json.dumps(ovr),
           "--clients-csv", str(clients_csv), "--plain-threads", str(threads)]
    wall, peak, pss, out = measured(cmd, "small_model: the plain loop")
    got = json.loads(out.strip().splitlines()[-1])
    return {**_walls(wall, pd.Series(got["walls"])), "peak_rss_mb": round(peak, 1), "peak_pss_mb": round(pss, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=list(VARIANTS), default="mlp")
    ap.add_argument("--clients", type=int, default=100_000, help="population (10 samples each)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3,
                    help="run every engine and the plain loop this many times, alternating the order; each "
                         "figure is the median over the repetitions, overhead_ratio the median of each "
                         "repetition's ratio (this machine's speed drifts by a third over minutes)")
    ap.add_argument("--engines", default="ray,local", help="fedtitan engines to measure: ray, local or both")
    ap.add_argument("--plain-threads", type=int, default=1,
                    help="torch threads of the plain loop (fedtitan's simulated clients train on "
                         "simulation.num_cpus threads, 1 by default, on either engine)")
    ap.add_argument("--pfl-python", metavar="PY",
                    help="also run the workload with pfl-research, under this interpreter (one with pfl and "
                         "torch installed; pfl is no dependency of fedtitan): reported as 'pfl'")
    ap.add_argument("--breakdown", action="store_true",
                    help="instead: where a client's time goes on the local engine, in ms per client")
    ap.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    ap.add_argument("--clients-csv", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_child:
        plain_loop(args)
        return
    engines = [e for e in args.engines.split(",") if e]
    if not engines or any(e not in ("ray", "local") for e in engines):
        raise SystemExit(f"small_model: --engines takes ray and/or local (comma-separated), got {args.engines!r}")
    if args.pfl_python and not _has_pfl(args.pfl_python):
        raise SystemExit(f"small_model: --pfl-python {args.pfl_python} cannot import pfl and torch; make a venv with "
                         "`pip install torch==2.13.0 \"pfl[pytorch]\"` and give its bin/python")
    others = ["plain", "pfl"] if args.pfl_python else ["plain"]  # run beside the engines
    rated = [*engines, "pfl"] if args.pfl_python else engines  # given an overhead ratio against the plain loop
    if args.breakdown:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data.npz"
            # made in a child: numpy's OpenBLAS threads, once busy in this process, slowed the
            # torch steps timed here about tenfold (6.7 against 0.6 ms a step, measured)
            subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from simulations.benchmarks."
                            "small_model import make_data; make_data(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))",
                            str(data), args.variant, str(10 * args.clients)], check=True)
            got = breakdown(overrides(data, args.variant, args.clients, args.rounds), Path(tmp) / "run")
        print(json.dumps({"variant": args.variant, "clients": args.clients, "rounds": args.rounds, **got}, indent=2))
        return
    result: dict = {"variant": args.variant, "clients": args.clients, "clients_per_round": CLIENTS_PER_ROUND,
                    "local_steps": STEPS, "batch_size": BATCH, "rounds": args.rounds}
    reps: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, OtherLoad() as load:
        data = Path(tmp) / "data.npz"
        make_data(data, args.variant, n_train=10 * args.clients)
        ovr = overrides(data, args.variant, args.clients, args.rounds)
        for rep in range(args.repeat):
            # every other repetition in the reverse order: the machine's speed drifts over minutes
            order = [*engines, *others] if rep % 2 == 0 else [*reversed(others), *reversed(engines)]
            one: dict[str, dict[str, float]] = {}
            for name in order:
                settle = wait_quiet()  # each run on a quiet machine: a Ray run's processes outlive it a while
                print(f"small_model: repetition {rep + 1}/{args.repeat}, {name} ...", file=sys.stderr, flush=True)
                if name == "plain":  # the clients the first engine sampled (every engine samples the same)
                    sampled = Path(tmp) / f"{engines[0]}-0" / "clients.csv"
                    one[name] = {**run_plain(ovr, sampled, args.plain_threads), "settle_s": settle}
                elif name == "pfl":
                    one[name] = {**run_pfl(args.pfl_python, data, args.variant, args.clients, args.rounds,
                                           args.plain_threads), "settle_s": settle}
                else:
                    one[name] = {**run_engine(name, ovr, Path(tmp) / f"{name}-{rep}"), "settle_s": settle}
            for engine in rated:
                one[engine]["overhead_ratio"] = round(one[engine]["round_wall_s"] / one["plain"]["round_wall_s"], 3)
            reps.append(one)
    for name in [*engines, *others]:  # each figure: the median over the repetitions
        result[name] = {k: round(float(np.median([r[name][k] for r in reps])), 4) for k in reps[0][name]}
    result["plain"]["threads"] = args.plain_threads
    plain = result["plain"]["round_wall_s"]
    for engine in rated:
        r = result[engine]
        r["per_client_overhead_ms"] = round(1e3 * (r["round_wall_s"] - plain) / CLIENTS_PER_ROUND, 2)
    result["repetitions"] = reps
    result["targets"] = {"overhead_ratio": 1.5, "startup_s_at_100000": 8}
    result.update(report(load))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
