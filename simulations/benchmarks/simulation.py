"""Flower + Ray overhead against a plain in-process loop; prints one JSON object.

    python -m simulations.benchmarks.simulation [--clients 50 --rounds 2 --dataset cifar10]

Both sides run the same client work (``fedtitan.training.client.client_round`` for every
client, every round, small CNN, all clients per round) and the same server-side FedAvg and
central evaluation. ``plain_loop_wall_s`` is the floor; ``ratio`` = fedtitan / plain loop.
Peak RSS sums the driver and every child process (Ray workers included), sampled at 5 Hz.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import psutil
import torch

from fedtitan.config import load_config
from fedtitan.training.client import build_global_model, client_round, dataset_for, setup_for
from fedtitan.training.common import evaluate
from strategies.fleet import ClientResult, fedavg
from strategies.server_app import eval_indices


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


def plain_loop(cfg) -> float:  # type: ignore[no-untyped-def]
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
            results.append(ClientResult(pid, "ok", out.metrics, {k: v.numpy() for k, v in out.state_dict.items()}))
        state = {k: torch.from_numpy(v) for k, v in fedavg(results).items()}
        model.load_state_dict(state)
        evaluate(model, ds.tensor("test", eval_ids), ds.labels("test", eval_ids))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=os.environ.get("FEDTITAN_SHARED_DATA"))
    ap.add_argument("--num-cpus", type=float, default=1.0)
    ap.add_argument("--device", default="auto", help="compute.device: auto, cpu, cuda, cuda:N, mps")
    args = ap.parse_args()
    overrides = [f"data.num_clients={args.clients}", f"run.rounds={args.rounds}", "server.fraction=1.0",
                 f"data.dataset={args.dataset}", "model.name=cnn", "data.partition=iid", "selection.method=titan",
                 "selection.local_steps=3", "selection.velocity=100", "selection.batch_size=10",
                 f"simulation.num_cpus={args.num_cpus}", "server.eval_samples=1000", f"compute.device={args.device}"]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config("quickstart", overrides)
    from simulations.run import run

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
    }, indent=2))


if __name__ == "__main__":
    main()
