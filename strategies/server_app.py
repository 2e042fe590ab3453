"""fedtitan's Flower ServerApp: sampling, virtual clock, deadlines, energy, per-client records.

A round, as :meth:`FleetServer.round` reads::

    sampled  = sample(rnd)                    # seeded, by partition id (strategies.fleet)
    messages = broadcast(rnd, sampled)        # the aggregator builds the train messages
    results  = collect(messages, sampled)     # every reply, failure and timeout, parsed
    included, round_s = include(results)      # deadlines / first-k / exclusions (the policy)
    updated  = aggregate(rnd, included)       # fedtitan's FedAvg or a Flower strategy
    acc, loss, client_acc = evaluate(rnd)     # central (and optionally federated) evaluation
    record(...)                               # rounds.csv + clients.csv, atomically

The policy decides *who* (:mod:`strategies.fleet`), the aggregator *how*
(:mod:`strategies.aggregate`). Results are written after every round, atomically, so a killed
run keeps its finished rounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from clients.object_store import ARRAYS_KEY, ServerArrays
from fedtitan.checkpoint import Checkpoint, CheckpointStore, ClientStateStore, StateError, unpack
from fedtitan.compute import describe, resolve_device, set_deterministic
from fedtitan.config import Config, load_config
from fedtitan.data import summary as partition_summary
from fedtitan.devices.catalog import CATALOG
from fedtitan.errors import FedtitanError
from fedtitan.paths import RESULTS_ROOT_ENV, inside_root
from fedtitan.results import RunWriter
from fedtitan.results.analysis import tier_costs
from fedtitan.results.tracking import make_tracker
from fedtitan.status import Status
from fedtitan.training.client import build_global_model, dataset_for, partition_for
from fedtitan.training.common import evaluate
from fedtitan.training.setup import fleet_dynamics
from strategies.aggregate import AggregationFailed, Aggregator, make_aggregator, to_arrays
from strategies.fleet import ClientResult, FleetPolicy, finite, finite_each
from strategies.registry import build_strategy
from strategies.state import load_strategy_state, strategy_state, unsaved

log = logging.getLogger("fedtitan")
DEVICE_NAMES = list(CATALOG)
ProgressFn = Callable[[dict[str, Any]], None]
STOP = threading.Event()  # set (e.g. by Ctrl-C or SIGTERM) to end the run cleanly after the current round
PARTITION_KEY = "partition-id"  # in a message's config: the partition a simulation worker plays
STATE_RECORD = "fedtitan-state"  # a client's state: a key of a train message's config, a record of the reply
CHECKPOINTS = "checkpoints"  # a run's checkpoints and its clients' states, inside the run folder
KEEP_CHECKPOINTS = 2
# fleet.timeline = "auto": fleet.csv gets every device's row each round up to this many devices,
# the sampled devices' beyond (100,000 rows cost about 0.4 s and 5 MB a round)
TIMELINE_ALL_MAX = 10_000
# simulation.arrays = "auto": models from this size travel through Ray's object store (at
# MobileNetV1's 12 MB it saves about 40 ms per client; at the small CNN's 0.4 MB the two ways
# cost the same within noise)
OBJECT_STORE_FROM_BYTES = 2**20
WORKER_RETRIES = 4  # re-sends of a dead client process's work, 1, 2, 4 and 8 s apart
# Tests only: SIGKILL this process mid-round N (after the clients replied, before anything of
# the round is written), the harshest place a crash can land.
KILL_AT_ENV = "FEDTITAN_TEST_KILL_AT_ROUND"


def eval_indices(cfg: Config, n_test: int) -> np.ndarray:
    """The seeded test subset of ``server.eval_samples`` used for central evaluation."""
    return np.sort(np.random.default_rng([cfg.run.seed, 0xE7A1]).permutation(n_test)[: cfg.server.eval_samples])


def _wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> list[int]:
    t0 = time.monotonic()
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() - t0 > timeout_s:
            return nodes
        time.sleep(0.5)


def _ask(grid: Grid, nodes: list[int], content: RecordDict, message_type: str, key: str,
         timeout_s: float) -> dict[int, float]:
    """Send ``content`` to every node; node id -> metric ``key`` of each successful reply."""
    msgs = [Message(content, dst_node_id=n, message_type=message_type) for n in nodes]
    return metric_of({r.metadata.src_node_id: r for r in grid.send_and_receive(msgs, timeout=timeout_s)}, key)


def metric_of(replies: dict[int, Message], key: str) -> dict[int, float]:
    """Sender -> metric ``key`` of each successful reply."""
    out = {}
    for sender, reply in replies.items():
        if not reply.has_error():
            rec = reply.content["metrics"]
            assert isinstance(rec, MetricRecord)
            out[sender] = float(cast(float, rec[key]))
    return out


def ask_partition_ids(grid: Grid, n: int, timeout_s: float) -> dict[int, int]:
    """Node id -> partition id of every connected node (waiting for at least ``n``)."""
    nodes = _wait_for_nodes(grid, n, timeout_s)
    content = RecordDict({"config": ConfigRecord({"what": "partition-id"})})
    return {node: int(v) for node, v in _ask(grid, nodes, content, "query", "partition_id", timeout_s).items()}


def workers_or_partitions(grid: Grid, n: int, timeout_s: float) -> tuple[list[int], dict[int, int] | None]:
    """What the connected nodes are: ``(workers, None)`` when they are simulation workers that
    play any partition (their node config names fewer partitions than the run's ``n``, as
    ``flwr run``'s default federation of 2 simulated SuperNodes does), else ``([], node id ->
    partition id)`` of real SuperNodes, one partition each (waiting for ``n`` of them)."""
    first = _wait_for_nodes(grid, 1, timeout_s)
    content = RecordDict({"config": ConfigRecord({"what": "partition-id"})})
    told = _ask(grid, first, content, "query", "num_partitions", timeout_s)
    if told and all(int(v) != n for v in told.values()):
        return sorted(told), None
    return [], ask_partition_ids(grid, n, timeout_s)


def with_config(message: Message, entries: dict[str, Any]) -> None:
    """Give ``message`` a config record of its own with ``entries`` added (a strategy may share
    one content, and one config, between all its messages)."""
    rec = message.content["config"]
    assert isinstance(rec, ConfigRecord)
    own = ConfigRecord({**{k: rec[k] for k in rec}, **entries})
    message.content = RecordDict({**{k: message.content[k] for k in message.content}, "config": own})


def worker_died(reason: str) -> bool:
    """A reply error that says the client's process died (not that the client raised)."""
    return any(s in reason for s in ("ActorDiedError", "RayActorError", "ActorUnavailableError",
                                     "actor died unexpectedly", "actor is temporarily unavailable"))


def error_gist(error: str) -> str:
    """The line of a client's error a person needs: Flower's ``Message: ...`` of the client's
    own exception when there is one (Ray wraps it in lines of actor ids), else the first line."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", error).splitlines() if ln.strip()]
    for ln in lines:
        if "Message: " in ln:
            return ln.split("Message: ", 1)[1][:300]
    return lines[0][:300] if lines else ""


def wants_object_store(mode: str, weights: dict[str, np.ndarray], grid: Any) -> bool:
    """Whether the weights go through Ray's object store (``simulation.arrays``): only in a
    simulation (Flower's in-memory grid), and with ``auto`` only from 1 MiB of weights."""
    if type(grid).__name__ != "InMemoryGrid" or mode == "messages":
        return False
    return mode == "object-store" or sum(np.asarray(v).nbytes for v in weights.values()) >= OBJECT_STORE_FROM_BYTES


def without_arrays(message: Message, key: str) -> None:
    """Let ``message`` name the weights published under ``key`` instead of carrying them."""
    content = {k: message.content[k] for k in message.content if k != "arrays"}
    message.content = RecordDict(content)
    with_config(message, {ARRAYS_KEY: key})


def parse_reply(reply: Message, node_id: int, stored: dict[str, np.ndarray] | None = None,
                check: bool = True) -> ClientResult:
    """A reply (or its error) as the policy sees it; non-finite weights are marked (unless
    ``check`` is False: the caller checks). ``stored``: the weights the reply named in Ray's
    object store (None when they were lost)."""
    if reply.has_error():
        reason = str(reply.error.reason)
        dropped = "InjectedDrop" in reason or "dropped mid-round" in reason
        return ClientResult(node_id, Status.DROPPED if dropped else Status.FAILED, error=error_gist(reason))
    metrics_rec = reply.content["metrics"]
    assert isinstance(metrics_rec, MetricRecord)
    metrics = {k: float(v) for k, v in metrics_rec.items() if isinstance(v, int | float)}
    status = Status.from_code(metrics.get("status", 0.0))
    arrays_rec = reply.content.array_records.get("arrays")
    arrays = None
    if ARRAYS_KEY in reply.content.config_records:
        if stored is None:
            return ClientResult(node_id, Status.FAILED, metrics,
                                error="its new weights were lost from Ray's object store (its process died)")
        arrays = stored
    elif arrays_rec is not None:
        arrays = {k: v.numpy() for k, v in arrays_rec.items()}
    if arrays is not None and check and status.trained and not finite(arrays):
        status = Status.NONFINITE
    return ClientResult(node_id, status, metrics, arrays, raw=reply)


@dataclass
class Evaluation:
    accuracy: float = math.nan
    loss: float = math.nan
    client_accuracy: dict[int, float] | None = None


class FleetServer:
    """One run on a grid: the steps of a round, each small enough to read and test alone."""

    def __init__(self, grid: Grid, cfg: Config, out_dir: str | Path, progress: ProgressFn | None = None,
                 resume_from: Checkpoint | None = None, pool: bool | None = None) -> None:
        self.grid, self.cfg, self.progress = grid, cfg, progress
        # pool: the grid's nodes are workers that play any partition (simulation); None: ask them
        self.pool = pool
        self.workers: list[int] = []
        s = cfg.server
        self.policy = FleetPolicy(s.fraction, s.min_clients, s.policy, s.deadline_s, s.over_commit, cfg.run.seed)
        self.writer = RunWriter(out_dir)
        self.cfg_json = cfg.to_json()
        self.resume_from = resume_from
        # names this run's client state on boards that keep it (a checkpoint carries it on)
        self.token = str(resume_from.state["token"]) if resume_from else hashlib.sha1(
            f"{self.cfg_json}|{Path(out_dir).resolve()}|{time.time_ns()}".encode()).hexdigest()[:16]
        mode = set_deterministic(cfg.run.deterministic)
        self.device = resolve_device(cfg.compute.device)
        resumed = _resumed_history(self.writer.dir) + ([resume_from.server_round] if resume_from else [])
        self.writer.write_config(self.cfg_json, cfg.run.seed,
                                 extra={"compute": {**describe(self.device), "mode": mode},
                                        **({"resumed_from_rounds": resumed} if resumed else {})})
        ds = dataset_for(cfg)
        self.writer.write_partition(partition_summary(partition_for(cfg, ds), ds.y_train, ds.num_classes))
        self.model = build_global_model(cfg, ds)
        self.global_state = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
        self.model.to(self.device)
        ids = eval_indices(cfg, len(ds.y_test))
        self.x_eval, self.y_eval = ds.tensor("test", ids).to(self.device), ds.labels("test", ids).to(self.device)
        self.nodes: list[int] = []
        self.keep = 0  # how many replies this round aggregates (set when sampling)
        self.factors_now: Any = None  # every device's factors at this round's start (living fleets: a FactorTable)
        t = cfg.tracking
        self.tracker = make_tracker(t.backend, t.uri, t.project, t.mode)
        # a sweep's run is written in .partial-RUN_ID and renamed when it has finished
        run_name = self.writer.dir.name.removeprefix(".partial-")
        if resume_from is not None:
            self.tracker.resume(self.writer.dir, json.loads(self.cfg_json), run_name,
                                dict(resume_from.state.get("tracker") or {}), resume_from.server_round)
        else:
            self.tracker.start(self.writer.dir, json.loads(self.cfg_json), run_name)
        self.partition_of: dict[int, int] = {}
        self.dynamics = fleet_dynamics(cfg)
        self.aggregator: Aggregator = make_aggregator(None, "fedavg")
        self.transport: ServerArrays | None = None  # weights through Ray's object store (simulation)
        self.virtual_s = 0.0
        self.energy_cum = 0.0
        # client state (simulation): the round of each partition's newest state in the store (-1: none)
        self.checkpoints = CheckpointStore(self.writer.dir / CHECKPOINTS, keep=KEEP_CHECKPOINTS)
        self.states = ClientStateStore(self.writer.dir / CHECKPOINTS / "clients", keep=1)
        self.client_rounds = np.full(cfg.data.num_clients, -1, dtype=np.int64)
        self.retained: list[np.ndarray] = []  # client_rounds of the checkpoints on disk (their states stay)
        self.state_io = [0.0, 0]  # seconds and bytes spent storing client states this round
        if resume_from is None:  # every RNG the server's side draws from (e.g. DP noise) starts from the seed
            random.seed(cfg.run.seed)
            np.random.seed(cfg.run.seed % 2**32)  # noqa: NPY002 - Flower's DP noise draws from it
            torch.manual_seed(cfg.run.seed)

    # -------------------------------------------------------------------------- set-up
    def connect(self, partition_ids: dict[int, int] | None = None) -> list[int]:
        """Wait for the clients; order them by partition id, so a seed samples the same
        partitions whatever node ids Flower gave them this run. Nodes beyond the run's
        ``data.num_clients`` partitions (a sweep's simulation has as many as its largest run)
        take no part. ``partition_ids`` (node id -> partition id) skips asking again."""
        s = self.cfg.server
        n = self.cfg.data.num_clients
        wait = min(s.timeout_s, 120.0)
        if self.pool is None and partition_ids is None:
            self.workers, partition_ids = workers_or_partitions(self.grid, n, wait)
            self.pool = partition_ids is None
        if self.pool:
            # every partition is a client with a stable id of its own (partition id + 1); a
            # round's messages are dealt to the workers and name their partition
            self.workers = self.workers or sorted(_wait_for_nodes(self.grid, 1, wait))
            if not self.workers:
                raise RuntimeError("no simulation workers connected to the server")
            self.nodes = list(range(1, n + 1))
            self.partition_of = {vid: vid - 1 for vid in self.nodes}
        else:
            if partition_ids is None:
                partition_ids = ask_partition_ids(self.grid, n, wait)
            nodes = [node for node, pid in partition_ids.items() if 0 <= pid < n]
            if not nodes:
                raise RuntimeError("no client nodes connected to the server")
            self.nodes = sorted(nodes, key=lambda node: (partition_ids[node], node))
            self.partition_of = {node: partition_ids[node] for node in self.nodes}
        num_sampled = self.policy.target(len(self.nodes))
        self.aggregator = make_aggregator(build_strategy(self.cfg, num_sampled), self.cfg.server.strategy)
        if wants_object_store(self.cfg.simulation.arrays, self.global_state, self.grid):
            self.transport = ServerArrays.start()  # None unless Ray runs in this process
        return self.nodes

    # -------------------------------------------------------------------------- a round
    def sample(self, rnd: int) -> list[int]:
        """Among the devices available at the round's start (the fleet's dynamics and trace,
        on the virtual clock): unavailable devices are never sampled."""
        if self.dynamics.is_static:
            self.keep = self.policy.keep(len(self.nodes))
            return self.policy.sample(self.nodes, rnd)
        # every device at the round's start, once (the fleet timeline reads the same)
        self.factors_now = self.dynamics.factors_many([self.partition_of[n] for n in self.nodes], self.virtual_s)
        up = [n for n, a in zip(self.nodes, self.factors_now.available.tolist(), strict=True) if a]
        self.keep = self.policy.keep(len(up), len(self.nodes))
        return self.policy.sample(up, rnd, population=len(self.nodes))

    def broadcast(self, rnd: int, sampled: list[int]) -> list[Message]:
        """The aggregator's train messages, each with its partition's last state (if any)."""
        config = ConfigRecord({"config": self.cfg_json, "run-token": self.token, "round-start-s": self.virtual_s})
        arrays = to_arrays(self.global_state)
        messages = self.aggregator.configure(rnd, arrays, config, self.grid, sampled)
        if self.transport is not None:  # the weights go through Ray's object store, once
            key = self.transport.publish(f"{self.token}/{rnd}", self.global_state)
            for m in messages:  # a strategy that sends other weights to some client keeps them inside
                if m.content.array_records.get("arrays") is arrays:
                    without_arrays(m, key)
        for m in messages:  # a strategy may share one content between its messages: give each its own
            pid = self.partition_of.get(m.metadata.dst_node_id, -1)
            if 0 <= pid < len(self.client_rounds) and self.client_rounds[pid] >= 0:
                r = int(self.client_rounds[pid])
                # in the train config itself: client mods (Flower's DP clipping) want exactly one ConfigRecord
                with_config(m, {STATE_RECORD: self.states.read(pid, r), f"{STATE_RECORD}-round": r})
        return messages

    def collect(self, rnd: int, messages: list[Message], sampled: list[int]) -> list[ClientResult]:
        """Every reply; the work of a client whose process died mid-round (Ray restarts it) is
        sent once more, so a killed worker costs time, not a different run."""
        sent = [m.metadata.dst_node_id for m in messages]
        replies = self.send(messages)
        for attempt in range(WORKER_RETRIES):  # Ray restarts a dead process; until it is back, sends fail too
            died = [(node, m) for node, m in zip(sent, messages, strict=True) if (r := replies.get(node)) is not None
                    and r.has_error() and worker_died(str(r.error.reason))]
            if not died:
                break
            log.warning("round %d: %d client process(es) died mid-round; sending their work again", rnd, len(died))
            time.sleep(2.0**attempt)
            replies.update(self.send([Message(m.content, dst_node_id=node, message_type=m.metadata.message_type,
                                              group_id=m.metadata.group_id) for node, m in died]))
        self.state_io = [0.0, 0]
        for node, reply in replies.items():
            self.keep_state(rnd, node, reply)
        stored = self.stored_arrays(rnd, replies)
        results = [parse_reply(replies[n], n, stored.get(n), check=False) if n in replies
                   else ClientResult(n, Status.FAILED, error="no reply (timeout)" if n in sent else "not sent by the strategy")
                   for n in sampled]
        trained = [res for res in results if res.arrays is not None and res.status.trained]
        for res, ok in zip(trained, finite_each([cast(dict, res.arrays) for res in trained]), strict=True):
            if not ok:
                res.status = Status.NONFINITE
        return results

    def stored_arrays(self, rnd: int, replies: dict[int, Message]) -> dict[int, dict[str, np.ndarray] | None]:
        """The weights the replies named in Ray's object store, by client; the round's entries
        are then dropped there (they live on while the arrays returned here are referenced)."""
        if self.transport is None:
            return {}
        named = {node: str(r.content.config_records[ARRAYS_KEY]["key"]) for node, r in replies.items()
                 if not r.has_error() and ARRAYS_KEY in r.content.config_records}
        out = dict(zip(named, self.transport.fetch(list(named.values())), strict=True))
        self.transport.drop(f"{self.token}/{rnd}/")
        return out

    def send(self, messages: list[Message]) -> dict[int, Message]:
        """Send messages addressed to clients; client id -> its reply. With a worker pool, each
        message names its partition and goes to a worker (dealt in turn); its reply comes back
        under the client's own id, so strategies, DP wrappers and clients.csv see one stable id
        per partition."""
        timeout = self.cfg.server.timeout_s
        if not self.pool:
            return {r.metadata.src_node_id: r for r in self.grid.send_and_receive(messages, timeout=timeout)}
        clients = []
        for i, m in enumerate(messages):
            clients.append(m.metadata.dst_node_id)
            with_config(m, {PARTITION_KEY: self.partition_of[m.metadata.dst_node_id]})
            m.metadata.dst_node_id = self.workers[i % len(self.workers)]
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        by_message = {m.metadata.message_id: vid for m, vid in zip(messages, clients, strict=True)}
        out = {}
        for r in replies:
            client = by_message.get(r.metadata.reply_to_message_id)
            if client is not None:
                r.metadata.__dict__["_src_node_id"] = client
                out[client] = r
        return out

    def ask(self, clients: list[int], content: RecordDict, message_type: str, key: str) -> dict[int, float]:
        """Client id -> metric ``key`` of each successful reply to ``content``."""
        return metric_of(self.send([Message(content, dst_node_id=c, message_type=message_type) for c in clients]), key)

    def keep_state(self, rnd: int, node: int, reply: Message) -> None:
        """Store the state a client sent back (simulation; boards keep theirs), keeping what
        the checkpoints on disk still refer to."""
        if reply.has_error() or node not in self.partition_of:
            return
        rec = reply.content.config_records.get(STATE_RECORD)
        if rec is None or "npz" not in rec:
            return
        pid = self.partition_of[node]
        t0 = time.perf_counter()
        referenced = {int(c[pid]) for c in self.retained if c[pid] >= 0}
        self.state_io[1] += self.states.put(pid, rnd, cast(bytes, rec["npz"]), keep_rounds=referenced)
        self.state_io[0] += time.perf_counter() - t0
        self.client_rounds[pid] = rnd

    def include(self, results: list[ClientResult], sampled: list[int]) -> tuple[list[ClientResult], float]:
        return self.policy.include(results, self.keep)

    def aggregate(self, rnd: int, included: list[ClientResult]) -> tuple[bool, str]:
        """Update the global model from the included replies; (updated, why not)."""
        need = self.cfg.server.min_clients
        if len(included) < need or not included:
            log.warning("round %d: only %d sampled clients succeeded (need %d); model not updated", rnd, len(included), need)
            return False, f"{len(included)} included < server.min_clients={need}"
        try:
            new = self.aggregator.aggregate(rnd, included, self.global_state)
        except AggregationFailed as exc:
            log.warning("round %d: %s; model not updated", rnd, exc)
            return False, str(exc)[:300]
        if new is None:
            return False, f"{self.aggregator.name} returned no arrays"
        if not finite(new):
            log.warning("round %d: %s produced non-finite weights; model not updated", rnd, self.aggregator.name)
            return False, "non-finite aggregate"
        self.global_state = new
        return True, ""

    def evaluate(self, rnd: int, sampled: list[int]) -> Evaluation:
        s = self.cfg.server
        if not (rnd % s.eval_every == 0 or rnd == self.cfg.run.rounds):
            return Evaluation()
        self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.global_state.items()})
        loss, acc = evaluate(self.model, self.x_eval, self.y_eval)
        client_acc = None
        if s.client_eval:
            content = RecordDict({"arrays": to_arrays(self.global_state),
                                  "config": ConfigRecord({"server-round": rnd, "config": self.cfg_json})})
            client_acc = self.ask(sampled, content, "evaluate", "accuracy")
        return Evaluation(acc, loss, client_acc)

    def fleet_rows(self, rnd: int, sampled: list[int], included: list[ClientResult]) -> list[dict[str, Any]]:
        """Every device's state at this round's start, and whether it was sampled and included
        (for the per-device timeline of the report); only the sampled devices' with
        ``fleet.timeline = "sampled"`` (or "auto" beyond ``TIMELINE_ALL_MAX`` devices)."""
        inc, picked = {r.node_id for r in included}, set(sampled)
        f, devices, timeline = self.factors_now, self.dynamics.devices, self.cfg.fleet.timeline
        every = timeline == "all" or (timeline == "auto" and len(self.nodes) <= TIMELINE_ALL_MAX)
        shown = np.arange(len(self.nodes)) if every else np.flatnonzero([n in picked for n in self.nodes])
        columns = zip([self.nodes[i] for i in shown.tolist()],
                      *(a[shown].tolist() for a in (f.available, f.speed_factor, f.select_share, f.bandwidth_factor)),
                      strict=True)
        return [{"server_round": rnd, "virtual_time_s": self.virtual_s, "partition_id": (pid := self.partition_of[node]),
                 "device": devices[pid], "available": int(up), "speed_factor": speed, "select_share": share,
                 "bandwidth_factor": bw, "sampled": int(node in picked), "included": int(node in inc)}
                for node, up, speed, share, bw in columns]

    def record(self, rnd: int, sampled: list[int], results: list[ClientResult], included: list[ClientResult],
               round_s: float, updated: bool, why: str, ev: Evaluation, wall_s: float) -> dict[str, Any]:
        fleet = None if self.dynamics.is_static else self.fleet_rows(rnd, sampled, included)
        self.virtual_s += round_s
        round_energy = float(sum(r.metrics.get("sim_energy_j", 0.0) if r.metrics.get("measured", 0) < 0.5
                                 else np.nan_to_num(r.metrics.get("energy_j", 0.0)) for r in results))
        self.energy_cum += round_energy
        client_acc = ev.client_accuracy or {}
        client_rows = [client_row(rnd, r, r in included, client_acc.get(r.node_id, math.nan)) for r in results]
        row = {
            "server_round": rnd, "accuracy": ev.accuracy, "loss": ev.loss, "virtual_time_s": self.virtual_s,
            "round_time_s": round_s, "energy_j": round_energy, "energy_cum_j": self.energy_cum,
            "clients_sampled": len(sampled), "clients_ok": len(included),
            "clients_failed": sum(r.status in (Status.FAILED, Status.NONFINITE, Status.DROPPED) for r in results),
            "client_accuracy_mean": float(np.mean(list(client_acc.values()))) if client_acc else math.nan,
            "clients_dropped": sum(r.status in (Status.STRAGGLER, Status.DECLINED, Status.UNAVAILABLE) for r in results),
            "updated": updated, "wall_s": wall_s,
            "measured_energy_missing": sum(r.metrics.get("measured", 0) >= 0.5 and r.metrics.get("energy_available", 1) < 0.5
                                           for r in results),
            "aggregation_error": why if not updated else "",
            "checkpoint_s": self.state_io[0], "checkpoint_bytes": self.state_io[1],
        }
        self.writer.add_round(row, client_rows, fleet)
        self.tracker.log_round(rnd, row)
        if self.progress is not None:
            self.progress(row)
        return row

    def round(self, rnd: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        sampled = self.sample(rnd)
        messages = self.broadcast(rnd, sampled)
        results = self.collect(rnd, messages, sampled)
        if os.environ.get(KILL_AT_ENV) == str(rnd):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        included, round_s = self.include(results, sampled)
        updated, why = self.aggregate(rnd, included)
        ev = self.evaluate(rnd, sampled)
        return self.record(rnd, sampled, results, included, round_s, updated, why, ev, time.perf_counter() - t0)

    # -------------------------------------------------------------------------- checkpoints
    def checkpoint(self, rnd: int, reached: int | None) -> None:
        """Everything the run needs to go on from after round ``rnd``, as data, atomically;
        its cost (and the client states stored this round) goes to rounds.csv."""
        strategy = getattr(self.aggregator, "strategy", None)
        state = {
            "config": self.cfg_json, "token": self.token, "model": self.global_state,
            "strategy": strategy_state(strategy), "virtual_s": self.virtual_s, "energy_cum_j": self.energy_cum,
            "rows": {"rounds": len(self.writer.rounds), "clients": len(self.writer.clients),
                     "fleet": self.writer.fleet_rows},
            "client_rounds": self.client_rounds.copy(), "tracker": self.tracker.resume_info(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002 - global, as Flower uses it
                    "torch": torch.get_rng_state()},
            "target_reached_round": reached,
        }
        t0 = time.perf_counter()
        blob = self.checkpoints.encode(rnd, state)
        # the round's row gets the checkpoint's size before the checkpoint exists: a run killed
        # just after writing it resumes from it with the row complete
        self.writer.update_last_round(checkpoint_s=self.state_io[0] + time.perf_counter() - t0,
                                      checkpoint_bytes=self.state_io[1] + len(blob))
        with self.writer.safe():
            self.checkpoints.save(rnd, blob)
        self.retained = [*self.retained, self.client_rounds.copy()][-KEEP_CHECKPOINTS:]
        self.writer.update_last_round(checkpoint_s=self.state_io[0] + time.perf_counter() - t0)

    def restore(self, ckpt: Checkpoint) -> int:
        """Put the run back as it was after ``ckpt``'s round; returns that round."""
        st = ckpt.state
        self.global_state = {k: np.asarray(v) for k, v in st["model"].items()}
        load_strategy_state(getattr(self.aggregator, "strategy", None), st.get("strategy") or {})
        self.virtual_s, self.energy_cum = float(st["virtual_s"]), float(st["energy_cum_j"])
        rows = st["rows"]
        self.writer.restore(int(rows["rounds"]), int(rows["clients"]), int(rows["fleet"]))
        self.client_rounds = np.asarray(st["client_rounds"], dtype=np.int64).copy()
        self.retained = [*older_client_rounds(self.checkpoints, ckpt.server_round), self.client_rounds.copy()]
        rng = st["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])  # noqa: NPY002
        torch.set_rng_state(rng["torch"])
        return ckpt.server_round

    def should_checkpoint(self, rnd: int, last: bool) -> bool:
        every = self.cfg.run.checkpoint_every
        return every > 0 and (last or rnd % every == 0)

    # -------------------------------------------------------------------------- the run
    def run(self, partition_ids: dict[int, int] | None = None) -> dict[str, Any]:
        self.connect(partition_ids)
        strategy = getattr(self.aggregator, "strategy", None)
        missing = unsaved(strategy) if self.cfg.run.checkpoint_every else []
        if missing:
            log.warning("strategy %s keeps attributes fedtitan cannot save (%s): a resumed run starts them afresh; "
                        "give it state_dict()/load_state_dict() (docs/extending.md)", self.aggregator.name,
                        ", ".join(missing))
        first = 1 if self.resume_from is None else self.restore(self.resume_from) + 1
        t_start = time.perf_counter()
        target = self.cfg.server.target_accuracy
        reached, interrupted = None, False
        last_row = self.writer.rounds[-1] if self.writer.rounds else {}
        acc, loss = float(last_row.get("accuracy", math.nan)), float(last_row.get("loss", math.nan))
        for rnd in range(first, self.cfg.run.rounds + 1):
            if STOP.is_set():
                interrupted = True
                log.warning("stopping before round %d as asked; finished rounds are on disk", rnd)
                break
            row = self.round(rnd)
            acc, loss = row["accuracy"], row["loss"]
            if target is not None and not math.isnan(acc) and acc >= target:
                reached = rnd
            if self.should_checkpoint(rnd, rnd == self.cfg.run.rounds or reached is not None or STOP.is_set()):
                self.checkpoint(rnd, reached)
            if reached is not None:
                break
        summary = {"rounds": len(self.writer.rounds), "final_accuracy": acc, "final_loss": loss,
                   "virtual_time_s": self.virtual_s, "energy_j": self.energy_cum,
                   "wall_s": time.perf_counter() - t_start, "target_reached_round": reached, "interrupted": interrupted,
                   **({"resumed_from_round": self.resume_from.server_round} if self.resume_from else {}),
                   **self.failures()}
        if self.cfg.run.save_model:
            self.writer.save_arrays("model.npz", self.global_state)
        self.writer.finish(summary)
        self.finish_tracking(summary)
        return summary

    def failures(self) -> dict[str, Any]:
        """How many client rounds failed, and ``failed`` (the reason) when no round updated the
        global model at all: such a run measured nothing, and a sweep redoes it."""
        failed = sum(int(r["clients_failed"]) for r in self.writer.rounds)
        out: dict[str, Any] = {"client_rounds_failed": failed}
        errors = [text(c.get("error")) for c in self.writer.clients if text(c.get("error"))]
        if errors:
            out["first_client_error"] = errors[0]
        if self.writer.rounds and not any(r["updated"] for r in self.writer.rounds) and not STOP.is_set():
            why = next((text(r["aggregation_error"]) for r in self.writer.rounds if text(r["aggregation_error"])), "")
            out["failed"] = f"no round updated the global model ({why})" + (
                f"; first client error: {out['first_client_error']}" if errors else "")
            log.error("run failed: %s", out["failed"])
        return out

    def finish_tracking(self, summary: dict[str, Any]) -> None:
        """The tracker's last entries: tier costs, the summary, the run's files and report."""
        if self.cfg.tracking.backend == "none":
            return
        if self.cfg.tracking.report and self.writer.rounds:
            try:
                from fedtitan.results.report import build_report

                build_report(self.writer.dir)
            except Exception as exc:  # the report is a convenience; the run's files are the record
                log.warning("tracking: no report.html for %s (%s)", self.writer.dir, exc)
        clients = pd.DataFrame(self.writer.clients)
        self.tracker.finish(self.writer.dir, summary, tier_costs(clients, []) if "device" in clients else pd.DataFrame())


def text(value: Any) -> str:
    """A text cell of a row: rows read back from CSV on resume hold NaN where the text was empty."""
    return value if isinstance(value, str) else ""


def _resumed_history(run_dir: Path) -> list[int]:
    try:
        return [int(r) for r in json.loads((run_dir / "meta.json").read_text()).get("resumed_from_rounds", [])]
    except (OSError, ValueError, TypeError):
        return []


def older_client_rounds(store: CheckpointStore, server_round: int) -> list[np.ndarray]:
    """The client-state rounds that the checkpoints older than ``server_round`` refer to (their
    client states must stay on disk while they do)."""
    out = []
    for r in store.rounds():
        if r < server_round:
            try:
                out.append(np.asarray(unpack(store.path(r), "checkpoint")["client_rounds"], dtype=np.int64))
            except (StateError, KeyError, TypeError):
                continue
    return out[-(KEEP_CHECKPOINTS - 1):] if KEEP_CHECKPOINTS > 1 else []


def find_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The newest valid checkpoint of a run folder whose client states are all on disk (a
    corrupt, truncated or incomplete one is refused with one warning line, the previous one used)."""
    run_dir = Path(run_dir)
    store = CheckpointStore(run_dir / CHECKPOINTS, keep=KEEP_CHECKPOINTS)
    states = ClientStateStore(run_dir / CHECKPOINTS / "clients")
    at_most: int | None = None
    while True:
        ckpt = store.latest(at_most)
        if ckpt is None:
            return None
        rounds = np.asarray(ckpt.state.get("client_rounds", []), dtype=np.int64)
        gone = [pid for pid, r in enumerate(rounds) if r >= 0 and not states.path(pid, int(r)).is_file()]
        if not gone:
            return ckpt
        log.warning("checkpoint %s refers to client states that are missing (partition %d, round %d); "
                    "using the previous checkpoint", ckpt.path, gone[0], rounds[gone[0]])
        at_most = ckpt.server_round - 1


RESUME_MAY_CHANGE = ("run.rounds",)  # beside the result-neutral settings (fedtitan.config.RESULT_NEUTRAL)


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> tuple[Config, Checkpoint | None]:
    """The config a cut-off run goes on with (its own config.json plus ``overrides``, of which
    only ``run.rounds`` and settings that do not change results may differ) and the checkpoint
    it goes on from (None when the run already finished every round). One-line errors."""
    from fedtitan.config import RESULT_NEUTRAL, apply_overrides, changed_settings, validate

    run_dir = Path(run_dir)
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        raise FedtitanError(f"{run_dir} is not a fedtitan run folder (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise FedtitanError(f"cannot read {run_dir / 'config.json'}: {exc}") from None
    cfg = validate(apply_overrides(json.loads(json.dumps(stored)), list(overrides or [])))
    changed = changed_settings(stored, cfg, (*RESULT_NEUTRAL, *RESUME_MAY_CHANGE))
    if changed:
        raise FedtitanError(f"cannot resume {run_dir} with {changed[0]}: that setting changes what the run computes "
                            "(only run.rounds, to extend a run, and "
                            f"{', '.join(k + '*' if k.endswith('.') else k for k in RESULT_NEUTRAL)} may change); "
                            "start a new run with another --out")
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        every = int(stored.get("run", {}).get("checkpoint_every", 1))
        why = "it was made with run.checkpoint_every=0" if every == 0 else "it ended before its first checkpoint"
        raise FedtitanError(f"no valid checkpoint in {run_dir / CHECKPOINTS} ({why}); start it again with fedtitan run")
    if cfg.run.rounds < ckpt.server_round:
        raise FedtitanError(f"run.rounds={cfg.run.rounds} but {run_dir} has already finished {ckpt.server_round} rounds; "
                            f"give run.rounds > {ckpt.server_round} to extend it")
    finished = (run_dir / "summary.json").is_file() and (
        ckpt.server_round >= cfg.run.rounds or ckpt.state.get("target_reached_round") is not None)
    return cfg, None if finished else ckpt


_ROW_FIRST = ("sim_time_s", "sim_energy_j", "num-examples", "partition_id", "device_id", "status")


def client_row(rnd: int, r: ClientResult, included: bool, client_accuracy: float) -> dict[str, Any]:
    """One row of clients.csv: who, what happened, and every metric the client sent."""
    device_id = r.metrics.get("device_id", -1)
    return {
        "server_round": rnd, "node_id": r.node_id,
        "partition_id": int(r.metrics["partition_id"]) if "partition_id" in r.metrics else -1,
        "device": DEVICE_NAMES[int(device_id)] if 0 <= device_id < len(DEVICE_NAMES) else "",
        "status": str(r.status), "included": included, "sim_time_s": r.metrics.get("sim_time_s", math.nan),
        "sim_energy_j": r.metrics.get("sim_energy_j", math.nan), "num_examples": r.metrics.get("num-examples", 0.0),
        **{k: v for k, v in r.metrics.items() if k not in _ROW_FIRST},
        "client_accuracy": client_accuracy, "error": r.error,
    }


def run_server(grid: Grid, cfg: Config, out_dir: str | Path, progress: ProgressFn | None = None,
               resume_from: Checkpoint | None = None, pool: bool | None = None) -> dict[str, Any]:
    """One run on ``grid``. ``pool``: its nodes are simulation workers that play any partition
    (True), real SuperNodes with a partition each (False), or ask them (None)."""
    if resume_from is not None:  # the run is unfinished again until it ends
        (Path(out_dir) / "summary.json").unlink(missing_ok=True)
    return FleetServer(grid, cfg, out_dir, progress, resume_from, pool).run()


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
    """Entry point for ``flwr run .``: reads ``preset`` / ``overrides`` / ``out`` from the run config;
    ``resume=true`` continues the run in ``out`` from its last checkpoint (``overrides`` may then
    extend ``run.rounds``).

    Under ``fedtitan superlink`` the output must stay inside its ``--results-root``."""
    rc = context.run_config
    ckpt = None
    try:
        overrides = [o for o in str(rc.get("overrides", "")).split() if o]
        resume = str(rc.get("resume", "false")).lower() in ("true", "1", "yes")
        if resume and not str(rc.get("out", "")):
            raise FedtitanError("resume=true needs out=RUN_DIR (the folder of the run to continue)")
        out: str | Path = str(rc.get("out", ""))
        root = os.environ.get(RESULTS_ROOT_ENV)
        if root and out:
            out = inside_root(root, out)
        if resume:
            cfg, ckpt = resume_config(out, overrides)
            if ckpt is None:
                print(f"fedtitan: {out} has finished all its rounds; extend it with overrides=\"run.rounds=N\"",
                      file=sys.stderr, flush=True)
                return
        else:
            cfg = load_config(str(rc.get("preset", "quickstart")), overrides)
        if not out:
            out = f"runs/{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            if root:
                out = inside_root(root, out)
    except FedtitanError as exc:
        # one line in the run's log (`flwr run --stream`, `flwr log`); raising an ordinary
        # exception lets Flower mark the run failed with this message as its detail
        print(f"fedtitan: error: {exc}", file=sys.stderr, flush=True)
        raise
    run_server(grid, cfg, out, resume_from=ckpt)
