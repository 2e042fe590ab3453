"""The synchronous round loop: one run of rounds on a grid, each round a sequence of named steps
(``server.mode = "async"``: :class:`strategies.async_loop.AsyncServer`, built on this one).

A round, as :meth:`FleetServer.round` reads::

    sample   = sampler.sample(...)            # seeded, by partition id (strategies.sampling)
    messages = broadcast(rnd, sampled)        # the aggregator builds the train messages
    results  = collect(rnd, messages, ...)    # every reply, failure and timeout, parsed
    hooks    (after_collect)                  # e.g. a test's fault injection (tests/faults.py)
    included, round_s = policy.include(...)   # deadlines / first-k / exclusions (the policy)
    updated  = aggregate(rnd, included)       # fedtitan's FedAvg or a Flower strategy
    ev       = evaluate(rnd, sampled)         # central (and optionally federated) evaluation
    record(RoundOutcome(...))                 # rows (strategies.rows) to the sinks

The loop owns no I/O: it is handed its sinks (:mod:`strategies.sinks`), its checkpointer
(:mod:`strategies.checkpoints`) and a stop event. What it composes is reusable by another
loop: :class:`~strategies.sampling.Sampler`, :class:`~strategies.dispatch.Dispatch`
(send/collect), :class:`~strategies.client_states.ClientStates`, the sinks and checkpoints.
:func:`strategies.loops.fleet_server` builds one (or the asynchronous loop) for a run folder.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from clients.object_store import ServerArrays
from fedtitan.checkpoint import Checkpoint
from fedtitan.compute import describe, resolve_device, set_deterministic
from fedtitan.config import Config
from fedtitan.data.partition import PartitionTable
from fedtitan.training.setup import build_global_model, dataset_for, fleet_dynamics, partition_for
from fedtitan.wire import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    ROUND_START_KEY,
    RUN_CONFIG_KEY,
    RUN_TOKEN_KEY,
    SERVER_ROUND_KEY,
)
from strategies.aggregate import AggregationFailed, Aggregator, make_aggregator, to_arrays
from strategies.checkpoints import Checkpointer
from strategies.client_states import ClientStates
from strategies.dispatch import Dispatch
from strategies.evaluation import CentralEval, Evaluation, eval_indices
from strategies.fleet import ClientResult, FleetPolicy
from strategies.history import History, failures
from strategies.messages import wants_object_store, without_arrays
from strategies.registry import build_strategy
from strategies.rows import RoundOutcome, client_rows, fleet_rows, round_energy_j, round_row
from strategies.sampling import Sample, Sampler
from strategies.sinks import (
    RoundRows,
    RunEnd,
    RunStart,
    Sink,
    Sinks,
)
from strategies.state import load_strategy_state, strategy_state, unsaved
from strategies.weights import finite

log = logging.getLogger("fedtitan")
# called with (server_round, results) once the round's replies are in, before anything of the
# round is recorded (tests install faults here: tests/faults.py)
AfterCollect = Callable[[int, list[ClientResult]], None]


class FleetServer:
    """One run on a grid. Construction keeps what it is given; :meth:`start` sets the run up
    (data, model, the sinks' first writes) and :meth:`run` runs it to its end, or until
    ``stop`` is set (the current round finishes first; the summary says ``interrupted``)."""

    def __init__(self, grid: Grid, cfg: Config, client_states: ClientStates, *, sinks: Sequence[Sink] = (),
                 checkpointer: Checkpointer | None = None, stop: threading.Event | None = None,
                 resume_from: Checkpoint | None = None, pool: bool | None = None,
                 after_collect: Sequence[AfterCollect] = (), token: str | None = None) -> None:
        self.grid, self.cfg, self.cfg_json = grid, cfg, cfg.to_json()
        self.states, self.sinks, self.checkpointer = client_states, Sinks(sinks), checkpointer
        self.stop = stop if stop is not None else threading.Event()
        self.resume_from, self.after_collect = resume_from, list(after_collect)
        # names this run's client state on boards that keep it (a checkpoint carries it on)
        self.token = str(resume_from.state["token"]) if resume_from else token or hashlib.sha1(
            f"{self.cfg_json}|{time.time_ns()}".encode()).hexdigest()[:16]
        s = cfg.server
        self.policy = FleetPolicy(s.fraction, s.min_clients, s.policy, s.deadline_s, s.over_commit, cfg.run.seed,
                                  s.clients_per_round)
        self.dispatch = Dispatch(grid, s.timeout_s, pool, cfg.simulation.clients_per_message)
        self.aggregator: Aggregator = make_aggregator(None, "fedavg")
        self.history = History()
        self.virtual_s = 0.0
        self.energy_cum = 0.0
        self.started = False

    # -------------------------------------------------------------------------- set-up
    def start(self) -> None:
        """Data, model and evaluation set; the sinks start (or go on from the checkpoint);
        every RNG the server's side draws from (e.g. DP noise) starts from the seed."""
        cfg = self.cfg
        mode = set_deterministic(cfg.run.deterministic)
        device = resolve_device(cfg.compute.device)
        ds = dataset_for(cfg)
        partition = PartitionTable.of(partition_for(cfg, ds), ds.y_train, ds.num_classes)
        model = build_global_model(cfg, ds)
        self.global_state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        model.to(device)
        ids = eval_indices(cfg, len(ds.y_test))
        self.central = CentralEval(model, ds.tensor("test", ids).to(device), ds.labels("test", ids).to(device))
        kept = self.sinks.start(RunStart(self.cfg_json, cfg.run.seed, {**describe(device), "mode": mode}, partition,
                                         self.resume_from))
        self.history = History(list(kept.rounds), list(kept.clients))
        self.sampler = Sampler(self.policy, fleet_dynamics(cfg))
        if self.resume_from is None:
            random.seed(cfg.run.seed)
            np.random.seed(cfg.run.seed % 2**32)  # noqa: NPY002 - Flower's DP noise draws from it
            torch.manual_seed(cfg.run.seed)
        self.started = True

    def connect(self, partition_ids: dict[int, int] | None = None) -> list[int]:
        """Wait for the clients (:meth:`Dispatch.connect`); the strategy is built for as many
        as a round samples."""
        nodes = self.dispatch.connect(self.cfg.data.num_clients, partition_ids)
        self.aggregator = make_aggregator(build_strategy(self.cfg, self.cohort(len(nodes))),
                                          self.cfg.server.strategy)
        if wants_object_store(self.cfg.simulation.arrays, self.global_state, self.grid):
            self.dispatch.transport = ServerArrays.start()  # None unless Ray runs in this process
        return nodes

    # -------------------------------------------------------------------------- a round
    def broadcast(self, rnd: int, sampled: list[int]) -> list[Message]:
        """The aggregator's train messages, each with its partition's last state (if any)."""
        config = ConfigRecord({RUN_CONFIG_KEY: self.cfg_json, RUN_TOKEN_KEY: self.token, ROUND_START_KEY: self.virtual_s,
                               **self.train_config()})
        arrays = to_arrays(self.global_state)
        messages = self.aggregator.configure(rnd, arrays, config, self.grid, sampled)
        transport = self.dispatch.transport
        if transport is not None:  # the weights go through Ray's object store, once
            key = transport.publish(f"{self.token}/{rnd}", self.global_state)
            for m in messages:  # a strategy that sends other weights to some client keeps them inside
                if m.content.array_records.get(ARRAYS_RECORD) is arrays:
                    without_arrays(m, key)
        for m in messages:  # a strategy may share one content between its messages: give each its own
            self.states.attach(m, self.dispatch.partition_of.get(m.metadata.dst_node_id, -1))
        return messages

    def train_config(self) -> dict[str, Any]:
        """A loop's own entries in the train messages' config."""
        return {}

    def cohort(self, nodes: int) -> int:
        """How many clients' updates one aggregation combines (a strategy is built for as many:
        DP noise is scaled by it)."""
        return self.policy.target(nodes)

    def collect(self, rnd: int, messages: list[Message], sampled: list[int]) -> list[ClientResult]:
        """Every sampled client's result; the states the clients sent back are stored."""
        sent = [m.metadata.dst_node_id for m in messages]
        replies = self.dispatch.send_surviving(messages, f"round {rnd}")
        self.states.reset_io()
        self.states.keep(rnd, {self.dispatch.partition_of[node]: reply for node, reply in replies.items()
                               if node in self.dispatch.partition_of})
        stored = self.dispatch.stored_arrays(replies, f"{self.token}/{rnd}/")
        return self.dispatch.results(replies, sent, sampled, stored)

    def aggregate(self, rnd: int, included: list[ClientResult]) -> tuple[bool, str]:
        """Update the global model from the included replies; (updated, why not)."""
        need = self.cfg.server.min_clients
        if len(included) < need or not included:
            log.warning("round %d: only %d sampled clients succeeded (need %d); model not updated", rnd, len(included), need)
            return False, f"{len(included)} included < server.min_clients={need}"
        return self.update_model(rnd, included, "round")

    def update_model(self, rnd: int, included: list[ClientResult], what: str) -> tuple[bool, str]:
        """The global model becomes :meth:`combine` of ``included`` unless that fails or is not
        finite; (updated, why not). ``what``: the step's name in the log (round, server step)."""
        try:
            new = self.combine(rnd, included)
        except AggregationFailed as exc:
            log.warning("%s %d: %s; model not updated", what, rnd, exc)
            return False, str(exc)[:300]
        if new is None:
            return False, f"{self.aggregator.name} returned no arrays"
        if not finite(new):
            log.warning("%s %d: %s produced non-finite weights; model not updated", what, rnd, self.aggregator.name)
            return False, "non-finite aggregate"
        self.global_state = new
        return True, ""

    def combine(self, rnd: int, included: list[ClientResult]) -> dict[str, np.ndarray] | None:
        """The aggregator's new weights from ``included``."""
        return self.aggregator.aggregate(rnd, included, self.global_state)

    def evaluate(self, rnd: int, sampled: list[int]) -> Evaluation:
        s = self.cfg.server
        if not (rnd % s.eval_every == 0 or rnd == self.cfg.run.rounds):
            return Evaluation()
        loss, acc = self.central(self.global_state)
        client_acc = None
        if s.client_eval:
            content = RecordDict({ARRAYS_RECORD: to_arrays(self.global_state),
                                  CONFIG_RECORD: ConfigRecord({SERVER_ROUND_KEY: rnd, RUN_CONFIG_KEY: self.cfg_json})})
            client_acc = self.dispatch.ask(sampled, content, "evaluate", "accuracy")
        return Evaluation(acc, loss, client_acc)

    def record(self, outcome: RoundOutcome, sample: Sample) -> dict[str, Any]:
        """The round's rows to the sinks; the virtual clock and the energy spent move on."""
        rnd, d = outcome.server_round, self.dispatch
        fleet = None if sample.factors is None else fleet_rows(
            rnd, self.virtual_s, d.nodes, d.partition_of, self.sampler.dynamics.devices, sample.factors,
            outcome.sampled, outcome.included, self.cfg.fleet.timeline)
        self.virtual_s += outcome.round_s
        self.energy_cum += round_energy_j(outcome.results)
        return self.keep_rows(RoundRows(rnd, round_row(outcome, self.virtual_s, self.energy_cum), client_rows(outcome),
                                        fleet))

    def keep_rows(self, rows: RoundRows) -> dict[str, Any]:
        """A step's rows to the sinks and the history; its rounds.csv row back."""
        self.sinks.add_round(rows)
        self.history.rounds.append(rows.row)
        self.history.clients.extend(rows.clients)
        return rows.row

    def round(self, rnd: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        sample = self.sampler.sample(rnd, self.dispatch.nodes, self.dispatch.partition_of, self.virtual_s)
        messages = self.broadcast(rnd, sample.sampled)
        results = self.collect(rnd, messages, sample.sampled)
        for hook in self.after_collect:
            hook(rnd, results)
        included, round_s = self.policy.include(results, sample.keep)
        updated, why = self.aggregate(rnd, included)
        ev = self.evaluate(rnd, sample.sampled)
        outcome = RoundOutcome(rnd, sample.sampled, results, included, round_s, updated, why, ev,
                               time.perf_counter() - t0, self.states.io_s, self.states.io_bytes)
        return self.record(outcome, sample)

    # -------------------------------------------------------------------------- checkpoints
    def checkpoint(self, rnd: int, reached: int | None) -> None:
        """Everything the run needs to go on from after round ``rnd``, as data, atomically;
        its cost (and the client states stored this round) goes to the round's row."""
        assert self.checkpointer is not None
        strategy = getattr(self.aggregator, "strategy", None)
        state = {
            "config": self.cfg_json, "token": self.token, "model": self.global_state,
            "strategy": strategy_state(strategy), "virtual_s": self.virtual_s, "energy_cum_j": self.energy_cum,
            **self.sinks.checkpoint_state(), "client_rounds": self.states.rounds.copy(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002 - global, as Flower uses it
                    "torch": torch.get_rng_state()},
            "target_reached_round": reached, **self.loop_state(),
        }
        self.states.sync()  # the client states it refers to reach the disk first (its time counts in io_s)
        t0 = time.perf_counter()
        blob = self.checkpointer.encode(rnd, state)
        io_s, io_bytes = self.states.io_s, self.states.io_bytes
        # the round's row gets the checkpoint's size before the checkpoint exists: a run killed
        # just after writing it resumes from it with the row complete
        self.sinks.update_round({"checkpoint_s": io_s + time.perf_counter() - t0,
                                 "checkpoint_bytes": io_bytes + len(blob)})
        self.checkpointer.save(rnd, blob)
        self.states.retain()
        self.sinks.update_round({"checkpoint_s": io_s + time.perf_counter() - t0})

    def restore(self, ckpt: Checkpoint) -> int:
        """Put the run back as it was after ``ckpt``'s round (the sinks took back their rows
        when they started); returns that round."""
        st = ckpt.state
        self.global_state = {k: np.asarray(v) for k, v in st["model"].items()}
        load_strategy_state(getattr(self.aggregator, "strategy", None), st.get("strategy") or {})
        self.virtual_s, self.energy_cum = float(st["virtual_s"]), float(st["energy_cum_j"])
        older = self.checkpointer.older_client_rounds(ckpt.server_round) if self.checkpointer else []
        self.states.restore(np.asarray(st["client_rounds"], dtype=np.int64), older)
        rng = st["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])  # noqa: NPY002
        torch.set_rng_state(rng["torch"])
        self.restore_loop(st)
        return ckpt.server_round

    def loop_state(self) -> dict[str, Any]:
        """What a loop keeps beyond the rounds' (an event-driven loop: its clients in flight)."""
        return {}

    def restore_loop(self, state: dict[str, Any]) -> None:
        """Back to :meth:`loop_state`'s entries of a checkpoint."""

    # -------------------------------------------------------------------------- the run
    def run(self, partition_ids: dict[int, int] | None = None) -> dict[str, Any]:
        if not self.started:
            self.start()
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
        last_row = self.history.rounds[-1] if self.history.rounds else {}
        acc, loss = float(last_row.get("accuracy", math.nan)), float(last_row.get("loss", math.nan))
        steps = self.steps(first)
        for rnd, row in steps:
            if row is None:
                interrupted = True
                log.warning("stopping before round %d as asked; finished rounds are on disk", rnd)
                break
            acc, loss = row["accuracy"], row["loss"]
            if target is not None and not math.isnan(acc) and acc >= target:
                reached = rnd
            last = rnd == self.cfg.run.rounds or reached is not None or self.stop.is_set()
            if self.checkpointer is not None and self.checkpointer.due(rnd, last):
                self.checkpoint(rnd, reached)
            if reached is not None:
                break
        steps.close()  # a loop's clean-up (clients still in flight) runs now, not when collected
        summary = {"rounds": len(self.history.rounds), "final_accuracy": acc, "final_loss": loss,
                   "virtual_time_s": self.virtual_s, "energy_j": self.energy_cum,
                   "wall_s": time.perf_counter() - t_start, "target_reached_round": reached, "interrupted": interrupted,
                   **({"resumed_from_round": self.resume_from.server_round} if self.resume_from else {}),
                   **self.summary_extra(), **self.failures()}
        self.states.syncer.close()
        self.sinks.finish(RunEnd(summary, self.history, self.global_state))
        return summary

    def steps(self, first: int) -> Generator[tuple[int, dict[str, Any] | None], None, None]:
        """The run's steps from ``first`` to ``run.rounds``: (round, its rounds.csv row), or
        (round, None) when ``stop`` was set before it (the run then ends)."""
        for rnd in range(first, self.cfg.run.rounds + 1):
            if self.stop.is_set():
                yield rnd, None
                return
            yield rnd, self.round(rnd)

    def summary_extra(self) -> dict[str, Any]:
        """A loop's own entries in summary.json."""
        return {}

    def failures(self) -> dict[str, Any]:
        """:func:`strategies.history.failures` of the run's rows, logged when the run failed."""
        out = failures(self.history, stopped=self.stop.is_set())
        if "failed" in out:
            log.error("run failed: %s", out["failed"])
        return out
