"""Flower + Ray overhead against a plain in-process loop; prints one JSON object.

    python -m simulations.benchmarks.simulation [--clients 50 --rounds 2 --dataset cifar10]
    python -m simulations.benchmarks.simulation --preset titan-fl-cifar10 [--rounds 12]

With ``--preset``: the preset runs for ``--rounds`` rounds under Ray, then the same client
work (the clients each round sampled, in order, with their states and the aggregated model)
is replayed in this process at the actors' thread count (torch, BLAS and OpenMP alike).
``floor_ratio`` is the median over rounds 2.. of the round's wall time / its compute floor:
the replayed client seconds divided by the client processes running in parallel, plus, in a
round the server evaluated centrally (``central_eval_rounds``: every ``server.eval_every``-th
and the last), that evaluation replayed here as the server runs it (its wall time is in the
round's). ``profile`` times, on the preset's model, what
a round does beyond the clients' work: building and reading the messages' ``ArrayRecord``s,
pickling a train message and a reply (what Ray does to move them), FedAvg, the checkpoint.

Both sides run the same client work (``fedtitan.training.client.client_round`` for every
client, every round, small CNN, all clients per round) and the same server-side FedAvg and
central evaluation. ``plain_loop_wall_s`` is the floor; ``ratio`` = fedtitan / plain loop.
Peak RSS sums the driver and every child process (Ray workers included), sampled at 5 Hz.
``other_processes_cpus``: the CPUs other processes kept busy meanwhile; above 0.1 a
``warning`` says the ratios are not comparable (:mod:`simulations.benchmarks.machine`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import pandas as pd
import psutil
import torch

from fedtitan.compute import one_arena
from fedtitan.config import load_config
from fedtitan.status import Status
from fedtitan.training.client import client_round
from fedtitan.training.common import evaluate
from fedtitan.training.setup import build_global_model, dataset_for, setup_for
from fedtitan.wire import ARRAYS_RECORD, CONFIG_RECORD, METRICS_RECORD, NUM_EXAMPLES, RUN_CONFIG_KEY
from simulations.benchmarks.machine import OtherLoad, report
from strategies.evaluation import eval_indices
from strategies.fleet import ClientResult
from strategies.weights import fedavg


class PeakRSS:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.wait(0.2):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def plain_loop(cfg) -> float:
    t0 = time.perf_counter()
    setup_for(cfg)
    ds = dataset_for(cfg)
    model = build_global_model(cfg, ds)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states: dict[int, dict] = {}
    eval_ids = eval_indices(cfg, len(ds.y_test))
    for rnd in range(1, cfg.run.rounds + 1):
        results = []
        for pid in range(cfg.data.num_clients):
            out = client_round(cfg, pid, state, states.get(pid), rnd)
            states[pid] = out.state
            results.append(ClientResult(pid, Status.OK, out.metrics, {k: v.numpy() for k, v in out.state_dict.items()}))
        state = {k: torch.from_numpy(v) for k, v in fedavg(results).items()}
        model.load_state_dict(state)
        evaluate(model, ds.tensor("test", eval_ids), ds.labels("test", eval_ids))
    return time.perf_counter() - t0


def replay_floor(cfg, clients: pd.DataFrame, threads: int,
                 eval_rounds: frozenset[int] = frozenset()) -> tuple[dict[int, float], dict[int, float]]:
    """Client seconds per round (the sampled clients' work replayed in this process at
    ``threads`` threads), and for each of ``eval_rounds`` the seconds of the server's central
    evaluation of that round's model (at this process's own thread count, as the server runs it)."""
    from threadpoolctl import threadpool_limits

    from fedtitan.status import Status

    previous = torch.get_num_threads()
    setup_for(cfg)
    ds = dataset_for(cfg)
    model = build_global_model(cfg, ds)
    eval_ids = eval_indices(cfg, len(ds.y_test))
    x_eval, y_eval = ds.tensor("test", eval_ids), ds.labels("test", eval_ids)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states: dict[int, dict] = {}
    client_s, eval_s = {}, {}
    for rnd, group in clients.groupby("server_round"):
        spent, results = 0.0, []
        torch.set_num_threads(threads)
        # numpy's BLAS and OpenMP pools too: a Ray actor of num_cpus=N runs with OMP_NUM_THREADS=N,
        # while this process's BLAS would otherwise use every core (it ran the replay on 1.7)
        limits = threadpool_limits(limits=threads)
        try:
            for pid in group.partition_id:
                t0 = time.perf_counter()
                o = client_round(cfg, int(pid), state, states.get(int(pid)), int(rnd))
                spent += time.perf_counter() - t0
                states[int(pid)] = o.state
                results.append(ClientResult(int(pid), Status.OK, o.metrics,
                                            {k: v.numpy() for k, v in o.state_dict.items()}))
        finally:
            limits.restore_original_limits()
            torch.set_num_threads(previous)
        state = {k: torch.from_numpy(v) for k, v in fedavg(results).items()}
        client_s[int(rnd)] = spent
        if int(rnd) in eval_rounds:
            model.load_state_dict(state)
            t0 = time.perf_counter()
            evaluate(model, x_eval, y_eval)
            eval_s[int(rnd)] = time.perf_counter() - t0
    return client_s, eval_s


def _ms(fn, reps: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return round((time.perf_counter() - t0) / reps * 1e3, 2)


def profile(cfg, clients_per_round: int) -> dict[str, float]:
    """Milliseconds of what a round moves and computes besides client training, on cfg's model."""
    import pickle

    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fedtitan.checkpoint import pack
    from strategies.aggregate import to_arrays

    model = build_global_model(cfg, dataset_for(cfg))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    np_state = {k: v.numpy() for k, v in sd.items()}
    rec = ArrayRecord(sd)
    content = RecordDict({ARRAYS_RECORD: rec, CONFIG_RECORD: ConfigRecord({RUN_CONFIG_KEY: cfg.to_json()})})
    reply = RecordDict({ARRAYS_RECORD: rec, METRICS_RECORD: MetricRecord({NUM_EXAMPLES: 1.0})})
    results = [ClientResult(i, Status.OK, {NUM_EXAMPLES: 1.0}, np_state) for i in range(clients_per_round)]
    return {
        "model_mb": round(sum(v.nbytes for v in np_state.values()) / 2**20, 2),
        "server_arrays_build_ms": _ms(lambda: to_arrays(np_state)),  # once a round
        "client_arrays_read_ms": _ms(lambda: rec.to_torch_state_dict()),  # each client
        "client_arrays_build_ms": _ms(lambda: ArrayRecord(sd)),  # each client's reply
        "server_arrays_read_ms": _ms(lambda: {k: v.numpy() for k, v in rec.items()}),  # each reply
        "train_message_pickle_ms": _ms(lambda: pickle.loads(pickle.dumps(Message(content, dst_node_id=1,
                                                                                 message_type="train")))),
        "reply_pickle_ms": _ms(lambda: pickle.loads(pickle.dumps(reply))),
        "fedavg_ms": _ms(lambda: fedavg(results), reps=2),
        "model_pack_ms": _ms(lambda: pack(np_state), reps=2),
    }


def preset_overhead(args: argparse.Namespace) -> None:
    overrides = [f"run.rounds={args.rounds}", *([f"data.data_dir={args.data_dir}"] if args.data_dir else [])]
    cfg = load_config(args.preset, overrides)
    from simulations.run import run

    with OtherLoad() as load:
        with tempfile.TemporaryDirectory() as tmp:
            run(cfg, tmp, quiet=True)
            rounds = pd.read_csv(f"{tmp}/rounds.csv").set_index("server_round")
            clients = pd.read_csv(f"{tmp}/clients.csv")
        processes = max(1, int((os.cpu_count() or 1) // cfg.simulation.num_cpus))
        threads = max(1, int(cfg.simulation.num_cpus))
        evaluated = frozenset(int(r) for r in rounds.index[rounds.accuracy.notna()])
        client_s, eval_s = replay_floor(cfg, clients, threads, evaluated)
        floor = pd.Series(client_s) / processes + pd.Series(eval_s).reindex(list(client_s), fill_value=0.0)
    later = rounds.index[rounds.index >= 2]
    ratio = rounds.wall_s[later] / floor[later]
    per_round = int(rounds.clients_sampled.median())
    print(json.dumps({
        "preset": args.preset, "rounds": args.rounds, "clients_per_round": per_round,
        "client_processes": processes, "actor_threads": threads,
        "round_wall_s_median": round(float(rounds.wall_s[later].median()), 3),
        "floor_s_median": round(float(floor[later].median()), 3),
        "floor_ratio": round(float(ratio.median()), 3), "floor_ratio_per_round": [round(float(x), 3) for x in ratio],
        "central_eval_rounds": sorted(evaluated), "central_eval_s": {r: round(v, 3) for r, v in sorted(eval_s.items())},
        "target": 1.2, "profile": profile(cfg, per_round), **report(load),
    }, indent=2))


# rounds a --preset run measures: the median is over rounds 2.., each of which varies by about
# 4 % on a 2-core machine; 12 rounds (two of them with central evaluation at eval_every = 10)
# take under 2 minutes at the paper's model size
PRESET_ROUNDS = 12


def main() -> None:
    one_arena()  # as fedtitan's command line does, before the load monitor's thread
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", help="measure this preset's rounds against their compute floor (floor_ratio)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, help=f"rounds to run (default 2; {PRESET_ROUNDS} with --preset)")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=os.environ.get("FEDTITAN_SHARED_DATA"))
    ap.add_argument("--num-cpus", type=float, default=1.0)
    ap.add_argument("--device", default="auto", help="compute.device: auto, cpu, cuda, cuda:N, mps")
    args = ap.parse_args()
    args.rounds = args.rounds or (PRESET_ROUNDS if args.preset else 2)
    if args.preset:
        preset_overhead(args)
        return
    overrides = [f"data.num_clients={args.clients}", f"run.rounds={args.rounds}", "server.fraction=1.0",
                 f"data.dataset={args.dataset}", "model.name=cnn", "data.partition=iid", "selection.method=titan",
                 "selection.local_steps=3", "selection.velocity=100", "selection.batch_size=10",
                 f"simulation.num_cpus={args.num_cpus}", "server.eval_samples=1000", f"compute.device={args.device}"]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config("quickstart", overrides)
    from simulations.run import run

    with OtherLoad() as load:
        with PeakRSS() as rss, tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run(cfg, tmp, quiet=True)
            fed = time.perf_counter() - t0
        with PeakRSS() as rss_plain:
            plain = plain_loop(cfg)
    print(json.dumps({
        "clients": args.clients, "rounds": args.rounds, "dataset": args.dataset, "model": "cnn",
        "client_num_cpus": args.num_cpus, "fedtitan_wall_s": round(fed, 2), "plain_loop_wall_s": round(plain, 2),
        "ratio": round(fed / plain, 3), "peak_rss_mb": round(rss.peak / 2**20, 1),
        "plain_loop_peak_rss_mb": round(rss_plain.peak / 2**20, 1), "torch_threads_plain": torch.get_num_threads(),
        **report(load),
    }, indent=2))


if __name__ == "__main__":
    main()
