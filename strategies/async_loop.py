"""Asynchronous aggregation on the virtual clock (``server.mode = "async"``): FedBuff and FedAsync.

:class:`AsyncServer` is :class:`~strategies.server.FleetServer` with another loop: no rounds,
but events in virtual-time order. Up to ``server.async.concurrency`` clients are in flight;
once ``dispatch_threshold`` slots are free, new clients are drawn (seeded) among the devices
available *now* and not in flight, and sent the current model. A dispatched client trains at
once (its process stays busy); its result is held until its virtual arrival, dispatch time +
its simulated (or measured) duration. Arrivals are processed in order of (arrival time,
dispatch number, client id); each update goes to the buffer, and when the buffer holds
``buffer_size`` (K) updates the server takes a step. A row of rounds.csv is a server step; a
row of clients.csv an update. ``run.rounds`` counts server steps.

The server step (``aggregate``), with ``n_i`` the update's examples and ``s(tau_i)`` its
staleness weight (``tau_i``: server steps since the model it started from)::

    rebased_i = w + s(tau_i) * (w_i - w_start_i)        # the update moved onto the current model
    w'        = w + lr * (aggregate(rebased) - w)        # aggregate: FedAvg by n_i, or the strategy's

With fedtitan's FedAvg that is ``w + lr * sum_i p_i s(tau_i) (w_i - w_start_i)``,
``p_i = n_i / sum_j n_j``: FedBuff's Algorithm 1 (which divides the weighted sum by K) when
the clients hold equal data, and FedAvg exactly when nothing is stale, weights are constant and
``lr = 1``. A stale update weighs less *and* the step is shorter (dividing by the weights'
sum instead would undo the down-weighting whenever every update is equally stale). Flower's
strategies (FedAdam, FedYogi, FedAvgM, Krum, ...) get the rebased updates as their replies, so
their server optimiser takes one step per flush.

Clients keep their stream, selector buffer and pruning subset across dispatches through the
client-state store, keyed by the dispatch's number (never reused: a client is never in flight
twice). A client that is unavailable (its trace or dynamics) at the moment its update arrives
loses it (status ``lost``; its energy is spent); one staler than ``max_staleness`` is dropped
(``stale``). Checkpoints hold the clients in flight with their updates, so a resumed run goes on
exactly.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
from flwr.app import Message, RecordDict

from clients.records import metric_record
from fedtitan.devices.cost import comm_cost
from fedtitan.errors import FedtitanError
from fedtitan.status import Status
from fedtitan.training.setup import device_of, setup_for
from fedtitan.wire import ARRAYS_RECORD, METRICS_RECORD, SCHEDULE_ROUND_KEY
from strategies.aggregate import anchor, to_arrays
from strategies.dispatch import Sent
from strategies.fleet import ClientResult
from strategies.rows import RoundOutcome, client_row, fleet_rows, round_energy_j, round_row
from strategies.server import FleetServer
from strategies.sinks import RoundRows

log = logging.getLogger("fedtitan")

IDLE_PROBE_S = 60.0  # with nothing in flight and no device available: look again this much later (virtual)
IDLE_MAX_S = 30 * 86400.0  # ... for at most this long, then the run stops with an error
STALL_FACTOR = 20  # arrivals without a full buffer, in units of max(K, concurrency), before a step is forced


def staleness_weight(kind: str, tau: int, a: float, b: int) -> float:
    """The weight of an update ``tau`` server steps stale: ``constant`` 1; ``polynomial``
    (1 + tau)^-a (a = 0.5: FedBuff's 1/sqrt(1 + tau)); ``hinge`` 1 up to b, then
    1 / (a (tau - b) + 1) (FedAsync); ``cutoff`` 1 up to b, then 0."""
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + tau) ** -a)
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    if kind == "cutoff":
        return 1.0 if tau <= b else 0.0
    raise ValueError(f"unknown staleness weighting {kind!r}")


@dataclass
class Pending:
    """A dispatch whose replies are not taken yet: what :meth:`AsyncServer.settle` needs."""

    event: int
    t: float
    sampled: list[int]
    dst: list[int]  # the messages' clients (before the pool's workers were put in)
    messages: list[Message]
    sent: Sent
    base: dict[str, np.ndarray]  # the model they got
    version: int
    bounds: dict[int, float]  # client -> the least seconds its update takes


@dataclass
class Update:
    """A dispatched client's work: its result, held until its virtual arrival. ``delta``: its
    new weights minus the model it started from (floating arrays; others as sent)."""

    result: ClientResult
    dispatch: int  # the dispatch's number (the client's round: its seeds, its state's key)
    dispatched_s: float
    arrival_s: float
    version: int  # server steps done when it was dispatched
    delta: dict[str, np.ndarray] | None = None
    staleness: int = -1  # set on arrival

    @property
    def order(self) -> tuple[float, int, int]:
        return self.arrival_s, self.dispatch, self.result.node_id

    def to_state(self) -> dict[str, Any]:
        r = self.result
        return {"node": r.node_id, "status": str(r.status), "metrics": dict(r.metrics), "error": r.error,
                "device": r.device, "dispatch": self.dispatch, "dispatched_s": self.dispatched_s,
                "arrival_s": self.arrival_s, "version": self.version, "delta": self.delta, "staleness": self.staleness}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> Update:
        metrics = {str(k): float(v) for k, v in st["metrics"].items()}
        result = ClientResult(int(st["node"]), Status(str(st["status"])), metrics, error=str(st["error"]),
                              device=str(st["device"]))
        delta = None if st["delta"] is None else {k: np.asarray(v) for k, v in st["delta"].items()}
        return cls(result, int(st["dispatch"]), float(st["dispatched_s"]), float(st["arrival_s"]), int(st["version"]),
                   delta, int(st["staleness"]))


class AsyncServer(FleetServer):
    """The event-driven loop of ``server.mode = "async"`` (the module's docstring says how it runs).

    ``run_ahead``: process arrivals while a dispatch's clients still train, up to the earliest
    moment one of them could arrive (:meth:`lower_bounds`); False waits for every dispatch at
    once. The same run either way (tested); only the wall time differs."""

    run_ahead = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        a = self.cfg.server.async_
        self.opts = a
        self.in_flight: dict[int, Update | None] = {}  # client id -> its update until processed (None: not in yet)
        self.pending: list[Pending] = []  # dispatches sent whose replies are not taken yet
        self.heap: list[tuple[float, int, int]] = []  # (arrival, dispatch, client id) of the clients in flight
        self.buffer: list[Update] = []
        self.arrived: list[Update] = []  # processed since the last server step (included or not)
        self.dispatched: list[int] = []  # clients sent since the last server step
        self.version = 0  # server steps done
        self.events = 0  # dispatches done (a dispatch sends every client drawn at one moment)
        self.step_start_s = 0.0  # the virtual time of the last server step
        self.counts = {"updates": 0, "included": 0, "lost": 0, "stale": 0, "failed": 0}

    # -------------------------------------------------------------------------- sizes
    def concurrency(self, nodes: int | None = None) -> int:
        return self.opts.concurrency or self.policy.target(len(self.dispatch.nodes) if nodes is None else nodes)

    def buffer_size(self, nodes: int | None = None) -> int:
        return self.opts.buffer_size or max(1, math.ceil(self.concurrency(nodes) / 2))

    def cohort(self, nodes: int) -> int:
        """A server step combines K updates (DP noise is scaled by it)."""
        return self.buffer_size(nodes)

    def train_config(self) -> dict[str, Any]:
        """The clients' learning-rate schedule follows the server steps, not the dispatches."""
        return {SCHEDULE_ROUND_KEY: self.version + 1}

    # -------------------------------------------------------------------------- dispatch
    def available(self, t: float) -> list[int]:
        """The clients that can be sent work at virtual time ``t``: available and not in flight."""
        nodes = self.dispatch.nodes
        if not self.sampler.dynamics.is_static:
            ids = self.sampler.partition_ids(nodes, self.dispatch.partition_of)
            up = self.sampler.dynamics.factors_many(ids, t).available.tolist()
            nodes = [n for n, u in zip(nodes, up, strict=True) if u]
        return [n for n in nodes if n not in self.in_flight] if self.in_flight else nodes

    def send_out(self, t: float, slots: int) -> int:
        """Draw up to ``slots`` clients available at ``t`` and send them the current model,
        without waiting for them (:meth:`settle` takes their results, which are then held until
        they arrive). Returns how many were sent."""
        candidates = self.available(t)
        if not candidates or slots <= 0:
            return 0
        self.events += 1
        e = self.events
        sampled = self.policy.draw(candidates, e, slots)
        self.virtual_s = t  # the clients read the fleet's dynamics at their dispatch
        messages = self.broadcast(e, sampled)
        dst = [m.metadata.dst_node_id for m in messages]
        sent = self.dispatch.push(messages)
        bounds = self.lower_bounds(sampled, t)
        self.pending.append(Pending(e, t, sampled, dst, messages, sent, self.global_state, self.version, bounds))
        for c in sampled:
            self.in_flight[c] = None
        self.dispatched.extend(sampled)
        if not self.run_ahead:
            self.settle(self.pending[-1])
        return len(sampled)

    def lower_bounds(self, clients: list[int], t: float) -> dict[int, float]:
        """Seconds that each client's update takes at the least: the model's download at its
        device's bandwidth at ``t`` (0 for measured devices and real boards, whose seconds the
        server cannot foresee). Nothing arrives sooner: a trained update also trains and uploads,
        and a client that fails, declines or is unavailable is known to have done so once it
        has the model. So the loop may process arrivals up to then before this dispatch's
        replies are in: client processes train while the server goes on."""
        if not self.dispatch.pool or self.cfg.fleet.meter == "measured":
            return dict.fromkeys(clients, 0.0)
        setup, dyn = setup_for(self.cfg), self.sampler.dynamics
        mb = float(setup.model_bytes)
        out = {}
        for c in clients:
            pid = self.dispatch.partition_of[c]
            profile = device_of(self.cfg, pid)
            if not dyn.is_static:
                profile = dyn.factors(pid, t).apply(profile)
            out[c] = comm_cost(profile, mb, 0.0).time_s
        return out

    def settle(self, p: Pending) -> None:
        """Take the replies of dispatch ``p`` (waiting for them): their states stored, their
        updates (new weights minus the model they got) held until they arrive."""
        self.pending.remove(p)
        replies = self.dispatch.send_surviving(p.messages, f"dispatch {p.event}", p.sent)
        self.states.keep(p.event, {self.dispatch.partition_of[node]: reply for node, reply in replies.items()
                                   if node in self.dispatch.partition_of})
        stored = self.dispatch.stored_arrays(replies, f"{self.token}/{p.event}/")
        results = self.dispatch.results(replies, p.dst, p.sampled, stored)
        for hook in self.after_collect:
            hook(p.event, results)
        for r in results:
            delta = None
            if r.trained and r.arrays is not None:
                delta = {k: (np.asarray(v) - p.base[k]) if np.issubdtype(np.asarray(v).dtype, np.floating)
                         else np.array(v, copy=True) for k, v in r.arrays.items()}
            took = max(r.time_s, p.bounds.get(r.node_id, 0.0))
            u = Update(replace(r, arrays=None, raw=None), p.event, p.t, p.t + took, p.version, delta)
            self.in_flight[r.node_id] = u
            heapq.heappush(self.heap, u.order)

    def settle_before(self, t: float | None) -> None:
        """Take every dispatch whose updates might arrive by ``t`` (None: all of them)."""
        for p in sorted(self.pending, key=lambda p: p.event):
            if t is None or p.t + min(p.bounds.values(), default=0.0) <= t:
                self.settle(p)

    # -------------------------------------------------------------------------- arrivals
    def arrive(self, u: Update) -> None:
        """An update reaches the server at ``u.arrival_s``: buffered, or why not."""
        r = u.result
        u.staleness = self.version - u.version
        self.counts["updates"] += 1
        if r.trained and u.delta is not None:
            pid = self.dispatch.partition_of.get(r.node_id, -1)
            dyn = self.sampler.dynamics
            if not dyn.is_static and not bool(dyn.factors_many(np.array([pid]), u.arrival_s).available[0]):
                r.status, r.error = Status.LOST, f"went offline before its update arrived ({u.arrival_s:.1f} s)"
            elif self.opts.max_staleness is not None and u.staleness > self.opts.max_staleness:
                r.status = Status.STALE
                r.error = f"staleness {u.staleness} > server.async.max_staleness={self.opts.max_staleness}"
            else:
                self.buffer.append(u)
        if r.status == Status.LOST:
            self.counts["lost"] += 1
        elif r.status == Status.STALE:
            self.counts["stale"] += 1
        elif not r.trained:
            self.counts["failed"] += 1
        self.arrived.append(u)

    def aggregate_buffer(self, step: int) -> tuple[bool, str]:
        """The server step on the buffered updates (the module's docstring has the formula)."""
        a, w = self.opts, self.global_state
        rebased: list[ClientResult] = []
        for u in self.buffer:
            s = staleness_weight(a.staleness, u.staleness, a.staleness_a, a.staleness_b)
            delta = cast(dict[str, np.ndarray], u.delta)
            arrays = {k: (w[k] + np.asarray(s * delta[k], dtype=w[k].dtype)) if np.issubdtype(w[k].dtype, np.floating)
                      else delta[k] for k in w}
            rebased.append(replace(u.result, arrays=arrays, raw=self.reply_of(u.result, arrays)))
        strategy = getattr(self.aggregator, "strategy", None)
        if strategy is not None:
            anchor(strategy, w)
        return self.update_model(step, rebased, "server step")

    def combine(self, rnd: int, included: list[ClientResult]) -> dict[str, np.ndarray] | None:
        """The aggregator's weights, with the server step's learning rate applied."""
        new, w, lr = super().combine(rnd, included), self.global_state, self.opts.server_lr
        if new is None or lr == 1.0:
            return new
        return {k: (w[k] + np.asarray(lr * (new[k].astype(np.float64) - w[k]), dtype=w[k].dtype))
                if np.issubdtype(w[k].dtype, np.floating) else new[k] for k in w}

    def reply_of(self, result: ClientResult, arrays: dict[str, np.ndarray]) -> Any:
        """A Flower reply carrying ``arrays`` and the client's metrics, for a Flower strategy
        (fedtitan's FedAvg reads the result itself)."""
        if getattr(self.aggregator, "strategy", None) is None:
            return None
        metrics = metric_record(dict(result.metrics))  # every metric the client sent (DP's norm bit, losses)
        return Message(RecordDict({ARRAYS_RECORD: to_arrays(arrays), METRICS_RECORD: metrics}),
                       dst_node_id=result.node_id, message_type="train")

    # -------------------------------------------------------------------------- a server step
    def server_step(self, step: int, t: float, wall0: float, forced: str = "") -> dict[str, Any]:
        if self.buffer:
            updated, why = self.aggregate_buffer(step)
        else:
            updated, why = False, forced or "no update in the buffer"
        self.virtual_s = t
        ev = self.evaluate(step, sorted({u.result.node_id for u in self.arrived}))
        arrived = sorted(self.arrived, key=lambda u: (u.dispatch, u.result.node_id))
        included = {id(u) for u in self.buffer}
        results = [u.result for u in arrived]
        outcome = RoundOutcome(step, list(self.dispatched), results, [u.result for u in arrived if id(u) in included],
                               t - self.step_start_s, updated, why, ev, time.perf_counter() - wall0,
                               self.states.io_s, self.states.io_bytes)
        self.energy_cum += round_energy_j(results)
        stale = [u.staleness for u in self.buffer]
        row = {**round_row(outcome, t, self.energy_cum),
               "updates_included": len(self.buffer), "updates_dropped": sum(u.result.status in (Status.LOST, Status.STALE)
                                                                            for u in arrived),
               "staleness_mean": float(np.mean(stale)) if stale else math.nan,
               "staleness_max": max(stale) if stale else math.nan, "model_version": self.version + int(updated)}
        acc = ev.client_accuracy or {}
        clients = [{**client_row(step, u.result, id(u) in included, acc.get(u.result.node_id, math.nan)),
                    "dispatch": u.dispatch, "dispatched_s": u.dispatched_s, "arrival_s": u.arrival_s,
                    "staleness": u.staleness, "model_version": u.version} for u in arrived]
        fleet = None
        if not self.sampler.dynamics.is_static:
            d = self.dispatch
            factors = self.sampler.dynamics.factors_many(self.sampler.partition_ids(d.nodes, d.partition_of), t)
            fleet = fleet_rows(step, t, d.nodes, d.partition_of, self.sampler.dynamics.devices, factors,
                               self.dispatched, outcome.included, self.cfg.fleet.timeline)
        self.keep_rows(RoundRows(step, row, clients, fleet))
        self.counts["included"] += len(self.buffer)
        self.version += int(updated)
        self.buffer, self.arrived, self.dispatched = [], [], []
        self.step_start_s = t
        return row

    # -------------------------------------------------------------------------- the loop
    def steps(self, first: int) -> Generator[tuple[int, dict[str, Any] | None], None, None]:
        conc, k, threshold = self.concurrency(), self.buffer_size(), self.opts.dispatch_threshold
        if threshold > conc:
            log.warning("server.async.dispatch_threshold=%d > concurrency %d: clients go out only when all %d "
                        "slots are free", threshold, conc, conc)
            threshold = conc
        try:
            yield from self._steps(first, conc, k, threshold)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Forget the dispatches still training when the loop ends early (stop, target, error):
        their weights leave Ray's object store; their replies are never read."""
        for p in self.pending:
            if self.dispatch.transport is not None:
                self.dispatch.transport.drop(f"{self.token}/{p.event}/")
        self.pending = []

    def _steps(self, first: int, conc: int, k: int,
               threshold: int) -> Generator[tuple[int, dict[str, Any] | None], None, None]:
        t, step, stalled, boundary, wall0 = self.virtual_s, first, 0, True, 0.0
        while True:
            if boundary:  # before a server step's arrivals (at the start, on resume, after a step)
                if step > self.cfg.run.rounds:
                    self.settle_before(None)  # no reply is left behind on the grid
                    return
                if self.stop.is_set():
                    yield step, None
                    return
                wall0, boundary = time.perf_counter(), False
                self.states.reset_io()  # the states stored from here on count in this step's row
            # free slots are filled once there are dispatch_threshold of them
            free = conc - len(self.in_flight)
            if free >= threshold:
                self.send_out(t, free)
            self.settle_before(self.heap[0][0] if self.heap else None)
            if not self.heap:  # nothing in flight: nobody was available; look again later
                idle_from = t
                while not self.heap:
                    t += IDLE_PROBE_S
                    if t - idle_from > IDLE_MAX_S:
                        raise FedtitanError(f"asynchronous run: no device was available for {IDLE_MAX_S / 86400:.0f} "
                                            f"virtual days from {idle_from:.0f} s; check the fleet's trace or dynamics")
                    self.send_out(t, conc)
                    self.settle_before(None)
            arrival, _, node = heapq.heappop(self.heap)
            t = arrival
            self.arrive(cast(Update, self.in_flight.pop(node)))
            stalled += 1
            forced = ""
            if len(self.buffer) < k and stalled >= STALL_FACTOR * max(k, conc):
                forced = f"{stalled} arrivals without {k} updates to aggregate"
            if len(self.buffer) >= k or forced:
                yield step, self.server_step(step, t, wall0, forced)
                stalled, step, boundary = 0, step + 1, True

    # -------------------------------------------------------------------------- checkpoints
    def checkpoint(self, rnd: int, reached: int | None) -> None:
        """Every dispatch's replies are taken first: the checkpoint holds every update in flight
        and the client states they left."""
        self.settle_before(None)
        super().checkpoint(rnd, reached)

    def loop_state(self) -> dict[str, Any]:
        """The clients in flight (with their updates), the buffer, the counters: a resumed run
        goes on from the same moment."""
        assert not self.pending, "a checkpoint is written once every dispatch's replies are in"
        flying = [u for u in self.in_flight.values() if u is not None]
        return {"async": {"in_flight": [u.to_state() for u in sorted(flying, key=lambda u: u.order)],
                          "buffer": [u.to_state() for u in self.buffer], "version": self.version,
                          "events": self.events, "step_start_s": self.step_start_s, "counts": dict(self.counts)}}

    def restore_loop(self, state: dict[str, Any]) -> None:
        st = state.get("async")
        if st is None:
            raise FedtitanError("this checkpoint was written by a synchronous run; resume it with server.mode=sync")
        flying = [Update.from_state(x) for x in st["in_flight"]]
        self.in_flight = {u.result.node_id: u for u in flying}
        self.heap = sorted(u.order for u in flying)
        self.buffer = [Update.from_state(x) for x in st["buffer"]]
        self.version, self.events = int(st["version"]), int(st["events"])
        self.step_start_s = float(st["step_start_s"])
        self.counts = {k: int(v) for k, v in st["counts"].items()}

    def summary_extra(self) -> dict[str, Any]:
        return {"mode": "async", "model_version": self.version, **{f"updates_{k}" if k != "updates" else "updates": v
                                                                  for k, v in self.counts.items()}}


__all__ = ["AsyncServer", "Update", "staleness_weight"]
