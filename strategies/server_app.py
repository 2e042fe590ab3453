"""fedtitan's Flower ServerApp: sampling, virtual clock, deadlines, energy, per-client records.

The loop is written on Flower's Grid directly so that every reply, including failures and
stragglers, is recorded; FedAvg runs over the included, finite updates (:mod:`strategies.fleet`).
Results are written after every round, atomically, so a killed run keeps its finished rounds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedtitan.config import Config, load_config
from fedtitan.data import summary as partition_summary
from fedtitan.devices.catalog import CATALOG
from fedtitan.results import RunWriter
from fedtitan.training.client import STATUS, build_global_model, dataset_for, partition_for
from fedtitan.training.common import evaluate
from strategies.fleet import ClientResult, FleetPolicy, fedavg, finite

log = logging.getLogger("fedtitan")
STATUS_NAMES = {v: k for k, v in STATUS.items()}
DEVICE_NAMES = list(CATALOG)
ProgressFn = Callable[[dict[str, Any]], None]
STOP = threading.Event()  # set (e.g. by Ctrl-C) to end the run cleanly after the current round


def _wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> list[int]:
    t0 = time.monotonic()
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() - t0 > timeout_s:
            return nodes
        time.sleep(0.5)


def _arrays(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})


def eval_indices(cfg: Config, n_test: int) -> np.ndarray:
    """The seeded test subset of ``server.eval_samples`` used for central evaluation."""
    return np.sort(np.random.default_rng([cfg.run.seed, 0xE7A1]).permutation(n_test)[: cfg.server.eval_samples])


def _ask(grid: Grid, nodes: list[int], content: RecordDict, message_type: str, key: str,
         timeout_s: float) -> dict[int, float]:
    """Send ``content`` to every node; node id -> metric ``key`` of each successful reply."""
    msgs = [Message(content, dst_node_id=n, message_type=message_type) for n in nodes]
    out = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout_s):
        if not reply.has_error():
            rec = reply.content["metrics"]
            assert isinstance(rec, MetricRecord)
            out[reply.metadata.src_node_id] = float(cast(float, rec[key]))
    return out


def _partition_ids(grid: Grid, nodes: list[int], timeout_s: float) -> dict[int, int]:
    """Ask every node for its partition id (node id -> partition id)."""
    content = RecordDict({"config": ConfigRecord({"what": "partition-id"})})
    return {n: int(v) for n, v in _ask(grid, nodes, content, "query", "partition_id", timeout_s).items()}


def _parse_reply(reply: Message, node_id: int) -> ClientResult:
    if reply.has_error():
        reason = str(reply.error.reason)
        status = "dropped" if "InjectedDrop" in reason or "dropped mid-round" in reason else "failed"
        return ClientResult(node_id, status, error=reason[:500])
    metrics_rec = reply.content["metrics"]
    assert isinstance(metrics_rec, MetricRecord)
    metrics = {k: float(v) for k, v in metrics_rec.items() if isinstance(v, int | float)}
    status = STATUS_NAMES.get(int(metrics.get("status", 0)), "ok")
    arrays_rec = reply.content.array_records.get("arrays")
    arrays = None
    if arrays_rec is not None:
        arrays = {k: v.numpy() for k, v in arrays_rec.items()}
        if status in ("ok", "reduced") and not finite(arrays):
            status = "nonfinite"
    return ClientResult(node_id, status, metrics, arrays)


def _client_evaluate(grid: Grid, nodes: list[int], state: dict[str, np.ndarray], cfg_json: str, rnd: int,
                     timeout_s: float) -> dict[int, float]:
    """Federated evaluation of the global model on each node's own test share."""
    content = RecordDict({"arrays": _arrays(state), "config": ConfigRecord({"server-round": rnd, "config": cfg_json})})
    return _ask(grid, nodes, content, "evaluate", "accuracy", timeout_s)


def run_server(grid: Grid, cfg: Config, out_dir: str | Path, progress: ProgressFn | None = None) -> dict[str, Any]:
    writer = RunWriter(out_dir)
    cfg_json = cfg.to_json()
    writer.write_config(cfg_json, cfg.run.seed)
    ds = dataset_for(cfg)
    writer.write_partition(partition_summary(partition_for(cfg, ds), ds.y_train, ds.num_classes))
    model = build_global_model(cfg, ds)
    global_state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    eval_ids = eval_indices(cfg, len(ds.y_test))
    x_eval, y_eval = ds.tensor("test", eval_ids), ds.labels("test", eval_ids)
    s = cfg.server
    policy = FleetPolicy(s.fraction, s.min_clients, s.policy, s.deadline_s, s.over_commit, cfg.run.seed)
    nodes = _wait_for_nodes(grid, cfg.data.num_clients, timeout_s=min(s.timeout_s, 120.0))
    if not nodes:
        raise RuntimeError("no client nodes connected to the server")
    # Sample partitions, not Flower node ids (those are random per run): order the nodes by
    # partition id so the seeded sample is the same whatever ids the nodes got.
    pids = _partition_ids(grid, nodes, min(s.timeout_s, 120.0))
    nodes = sorted(nodes, key=lambda n: (pids.get(n, 1 << 62), n))
    virtual_s, energy_cum = 0.0, 0.0
    acc, loss = math.nan, math.nan
    t_start = time.perf_counter()
    reached = None
    interrupted = False
    for rnd in range(1, cfg.run.rounds + 1):
        if STOP.is_set():
            interrupted = True
            log.warning("stopping before round %d as asked; finished rounds are on disk", rnd)
            break
        t_round = time.perf_counter()
        sampled = policy.sample(nodes, rnd)
        arrays = _arrays(global_state)
        config = ConfigRecord({"server-round": rnd, "config": cfg_json})
        messages = [Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=n, message_type="train")
                    for n in sampled]
        replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(messages, timeout=s.timeout_s)}
        results = [_parse_reply(replies[n], n) if n in replies else ClientResult(n, "failed", error="no reply (timeout)")
                   for n in sampled]
        included, round_s = policy.include(results, len(sampled))
        if len(included) >= s.min_clients and included:
            global_state = fedavg(included)
            updated = True
        else:
            updated = False
            log.warning("round %d: only %d of %d sampled clients succeeded (need %d); model not updated",
                        rnd, len(included), len(sampled), s.min_clients)
        virtual_s += round_s
        round_energy = float(sum(r.metrics.get("sim_energy_j", 0.0) if r.metrics.get("measured", 0) < 0.5
                                 else np.nan_to_num(r.metrics.get("energy_j", 0.0)) for r in results))
        energy_cum += round_energy
        client_acc: dict[int, float] = {}
        if rnd % s.eval_every == 0 or rnd == cfg.run.rounds:
            model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in global_state.items()})
            loss, acc = evaluate(model, x_eval, y_eval)
            if s.client_eval:
                client_acc = _client_evaluate(grid, sampled, global_state, cfg_json, rnd, s.timeout_s)
        else:
            acc, loss = math.nan, math.nan
        client_rows = [{
            "server_round": rnd, "node_id": r.node_id,
            "partition_id": int(r.metrics["partition_id"]) if "partition_id" in r.metrics else -1,
            "device": DEVICE_NAMES[int(r.metrics["device_id"])] if 0 <= r.metrics.get("device_id", -1) < len(DEVICE_NAMES) else "",
            "status": r.status, "included": r in included, "sim_time_s": r.metrics.get("sim_time_s", math.nan),
            "sim_energy_j": r.metrics.get("sim_energy_j", math.nan), "num_examples": r.metrics.get("num-examples", 0.0),
            **{k: v for k, v in r.metrics.items() if k not in ("sim_time_s", "sim_energy_j", "num-examples", "partition_id",
                                                           "device_id", "status")},
            "client_accuracy": client_acc.get(r.node_id, math.nan),
            "error": r.error,
        } for r in results]
        n_failed = sum(r.status in ("failed", "nonfinite", "dropped") for r in results)
        row = {
            "server_round": rnd, "accuracy": acc, "loss": loss, "virtual_time_s": virtual_s, "round_time_s": round_s,
            "energy_j": round_energy, "energy_cum_j": energy_cum, "clients_sampled": len(sampled),
            "clients_ok": len(included), "clients_failed": n_failed,
            "client_accuracy_mean": float(np.mean(list(client_acc.values()))) if client_acc else math.nan,
            "clients_dropped": sum(r.status in ("straggler", "declined", "unavailable") for r in results),
            "updated": updated, "wall_s": time.perf_counter() - t_round,
            "measured_energy_missing": sum(r.metrics.get("measured", 0) >= 0.5 and r.metrics.get("energy_available", 1) < 0.5
                                           for r in results),
        }
        writer.add_round(row, client_rows)
        if progress is not None:
            progress(row)
        if s.target_accuracy is not None and not math.isnan(acc) and acc >= s.target_accuracy:
            reached = rnd
            break
    summary = {"rounds": len(writer.rounds), "final_accuracy": acc, "final_loss": loss, "virtual_time_s": virtual_s,
               "energy_j": energy_cum, "wall_s": time.perf_counter() - t_start, "target_reached_round": reached,
               "interrupted": interrupted}
    writer.finish(summary)
    return summary


def make_server_app(cfg: Config, out_dir: str | Path, progress: ProgressFn | None = None) -> ServerApp:
    """A ServerApp bound to a config (simulation: Flower's run config is empty there)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, out_dir, progress)

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: reads ``preset`` / ``overrides`` / ``out`` from the run config."""
    rc = context.run_config
    overrides = [o for o in str(rc.get("overrides", "")).split() if o]
    cfg = load_config(str(rc.get("preset", "quickstart")), overrides)
    out = str(rc.get("out", "")) or f"runs/{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_server(grid, cfg, out)
