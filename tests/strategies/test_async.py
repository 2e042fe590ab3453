"""The asynchronous loop (strategies/async_loop.py): scripted timelines checked by hand, FedAsync
and FedBuff steps against their formulas, a client never in flight twice, and the asynchronous
run equal to the synchronous wait-all one where the two must agree."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedtitan as ft
from fedtitan.config import load_config
from fedtitan.errors import ConfigError
from fedtitan.status import Status
from strategies.async_loop import AsyncServer, staleness_weight
from strategies.client_states import ClientStates
from strategies.evaluation import Evaluation
from strategies.fleet import ClientResult, FleetPolicy


# ----------------------------------------------------------------------------- a scripted fleet
class FakeDispatch:
    """The server's Dispatch for scripted clients: a push "trains" them on the model of the
    moment (as a worker would, while the loop goes on); the pull hands their results over."""

    def __init__(self, server: Scripted) -> None:
        self.server, self.pool = server, True
        self.nodes: list[int] = []
        self.partition_of: dict[int, int] = {}
        self.pulled: list[int] = []  # dispatch numbers, in the order their replies were taken

    def push(self, messages):
        self.most_pending = max(getattr(self, "most_pending", 0), len(self.server.pending) + 1)
        e = self.server.events
        return {"event": e, "arrived": self.server.counts["updates"], "results": [self.server.train(e, m.metadata.dst_node_id, self.server.global_state)
                                        for m in messages]}

    def send_surviving(self, messages, what, sent):
        self.pulled.append(sent["event"])
        self.ahead = max(getattr(self, "ahead", 0), self.server.counts["updates"] - sent["arrived"])
        return {"results": sent["results"]}

    def stored_arrays(self, replies, prefix):
        return {}

    def results(self, replies, dst, sampled, stored):
        return replies["results"]


class LowestFirst(FleetPolicy):
    """Draws the lowest client ids (a timeline a person can follow)."""

    def draw(self, nodes, key, k):  # type: ignore[override]
        return list(nodes)[:k]


@dataclass
class Factors:
    available: np.ndarray

    def __getattr__(self, name: str) -> np.ndarray:  # speed, select share, bandwidth: as profiled
        return np.ones(len(self.available))


class Dynamics:
    """Client ``c`` is offline during ``offline[c]`` = (start, end) of virtual time."""

    def __init__(self, offline: dict[int, tuple[float, float]] | None = None) -> None:
        self.offline = offline or {}
        self.is_static = not self.offline
        self.devices = ["scripted"] * 64

    def factors_many(self, ids: np.ndarray, t: float) -> Factors:
        return Factors(np.array([not (a <= t < b) for a, b in (self.offline.get(int(i) + 1, (0, 0)) for i in ids)]))


class Scripted(AsyncServer):
    """An AsyncServer whose clients are scripted: client c takes ``durations[c]`` virtual seconds
    (a list: one per dispatch, the last repeated), sends back the model it got plus ``steps[c]``,
    with ``examples[c]`` examples; ``fail`` holds (client, dispatch) pairs that fail."""

    def __init__(self, tmp: Path, n: int, overrides: list[str], durations: dict[int, Any],
                 steps: dict[int, float] | None = None, examples: dict[int, float] | None = None,
                 fail: set[tuple[int, int]] = frozenset(), offline: dict[int, tuple[float, float]] | None = None,
                 lowest_first: bool = True) -> None:
        cfg = load_config("quickstart", ["server.mode=async", f"data.num_clients={n}", *overrides])
        super().__init__(None, cfg, ClientStates(tmp, n, 2))
        self.dispatch = FakeDispatch(self)  # type: ignore[assignment]
        self.dispatch.nodes = list(range(1, n + 1))
        self.dispatch.partition_of = {c: c - 1 for c in self.dispatch.nodes}
        if lowest_first:
            p = self.policy
            self.policy = LowestFirst(p.fraction, p.min_clients, seed=p.seed)

        class _Sampler:
            dynamics = Dynamics(offline)

            @staticmethod
            def partition_ids(nodes, partition_of):
                return np.array([partition_of[x] for x in nodes])

        self.sampler = _Sampler()  # type: ignore[assignment]
        self.global_state = {"w": np.zeros(1)}
        self.durations, self.fail = durations, fail
        self.steps_of = steps or {}
        self.examples = examples or {}
        self.sent: list[tuple[int, float, list[int]]] = []  # (dispatch, time, clients)
        self.times: dict[int, int] = {}
        self.bounds: dict[int, float] = {}  # client -> the least seconds its update takes (lower_bounds)

    def broadcast(self, rnd, sampled):  # type: ignore[override]
        assert not set(sampled) & set(self.in_flight), "a client in flight was sent work again"
        self.sent.append((rnd, self.virtual_s, list(sampled)))
        return [SimpleNamespace(metadata=SimpleNamespace(dst_node_id=c)) for c in sampled]

    def lower_bounds(self, clients, t):  # type: ignore[override]
        return {c: self.bounds.get(c, 0.0) for c in clients}

    def train(self, rnd: int, c: int, base: dict[str, np.ndarray]) -> ClientResult:
        k = self.times.get(c, 0)
        self.times[c] = k + 1
        d = self.durations[c]
        dur = d[min(k, len(d) - 1)] if isinstance(d, list) else d
        if (c, rnd) in self.fail:
            return ClientResult(c, Status.FAILED, error="scripted failure")
        metrics = {"sim_time_s": float(dur), "num-examples": float(self.examples.get(c, 1.0)), "sim_energy_j": 1.0}
        return ClientResult(c, Status.OK, metrics, {"w": base["w"] + self.steps_of.get(c, 1.0)})

    def evaluate(self, rnd, sampled):  # type: ignore[override]
        return Evaluation(accuracy=float(self.global_state["w"][0]))

    def run_steps(self, first: int = 1) -> list[dict[str, Any]]:
        return [row for _, row in self.steps(first) if row is not None]


# ----------------------------------------------------------------------------- weights
def test_staleness_weights_by_hand():
    assert staleness_weight("constant", 7, 0.5, 4) == 1.0
    assert staleness_weight("polynomial", 3, 0.5, 4) == pytest.approx(0.5)  # FedBuff: 1/sqrt(1 + 3)
    assert staleness_weight("polynomial", 0, 0.5, 4) == 1.0
    assert staleness_weight("hinge", 4, 2.0, 4) == 1.0
    assert staleness_weight("hinge", 6, 2.0, 4) == pytest.approx(1 / 5)  # 1 / (a (s - b) + 1)
    assert staleness_weight("cutoff", 4, 0.5, 4) == 1.0 and staleness_weight("cutoff", 5, 0.5, 4) == 0.0


# ----------------------------------------------------------------------------- a timeline by hand
def test_fedasync_timeline_and_steps_by_hand(tmp_path):
    """K = 1, two in flight, the lowest free client id sent; client c adds c to the model it
    got, in a fixed time (1: 1.0 s, 2: 2.5 s, 3: 0.7 s); server learning rate 0.5.

    t=0    send 1 (arrives 1.0) and 2 (arrives 2.5), both from version 0
    t=1.0  1 arrives, staleness 0: w = 0 + .5*1*1 = .5; send 1 again (arrives 2.0)
    t=2.0  1 arrives, staleness 0: w = .5 + .5*1 = 1.0; send 1 (arrives 3.0)
    t=2.5  2 arrives, staleness 2 (sent at version 0, now 2): w = 1 + .5*2/sqrt(3); send 2 (5.0)
    t=3.0  1 arrives, staleness 1 (sent at 2, now 3): w += .5*1/sqrt(2); send 1 (4.0)
    t=4.0  1 arrives, staleness 0: w += .5*1
    """
    s = Scripted(tmp_path, 3, ["run.rounds=5", "server.async.concurrency=2", "server.async.buffer_size=1",
                               "server.async.server_lr=0.5"],
                 durations={1: 1.0, 2: 2.5, 3: 0.7}, steps={1: 1.0, 2: 2.0, 3: 3.0})
    rows = s.run_steps()
    assert [r["virtual_time_s"] for r in rows] == pytest.approx([1.0, 2.0, 2.5, 3.0, 4.0])
    assert [r["round_time_s"] for r in rows] == pytest.approx([1.0, 1.0, 0.5, 0.5, 1.0])
    assert [r["staleness_max"] for r in rows] == [0, 0, 2, 1, 0]
    w = [0.5, 1.0]
    w.append(w[-1] + 0.5 * 2 / math.sqrt(3))
    w.append(w[-1] + 0.5 * 1 / math.sqrt(2))
    w.append(w[-1] + 0.5 * 1)
    assert [r["accuracy"] for r in rows] == pytest.approx(w, rel=1e-12)
    assert s.sent == [(1, 0.0, [1, 2]), (2, 1.0, [1]), (3, 2.0, [1]), (4, 2.5, [2]), (5, 3.0, [1])]
    clients = s.history.clients
    assert [(c["node_id"], c["dispatched_s"], c["arrival_s"], c["staleness"]) for c in clients] == [
        (1, 0.0, 1.0, 0), (1, 1.0, 2.0, 0), (2, 0.0, 2.5, 2), (1, 2.0, 3.0, 1), (1, 3.0, 4.0, 0)]
    assert [r["model_version"] for r in rows] == [1, 2, 3, 4, 5]


def test_fedbuff_step_weights_examples_and_staleness(tmp_path):
    """K = 2, constant concurrency 2: the step is w + sum_i p_i s(tau_i) delta_i, p_i by examples."""
    s = Scripted(tmp_path, 3, ["run.rounds=2", "server.async.concurrency=2", "server.async.buffer_size=2"],
                 durations={1: 1.0, 2: [3.0, 1.0], 3: 1.5}, steps={1: 1.0, 2: 2.0, 3: 4.0},
                 examples={1: 10.0, 2: 30.0, 3: 20.0})
    rows = s.run_steps()
    # t=1: 1 arrives (stal. 0), send 1 again (arrives 2); t=2: 1 arrives: buffer {1, 1} -> step 1,
    # w1 = 0 + (10*1 + 10*1)/20 = 1; 1 goes out again (2 is in flight), arrives at 3. At t=3, 2
    # (sent at version 0, now 1: staleness 1; dispatch 1 before dispatch 3 in a tie) and 1 arrive:
    # w2 = 1 + (30*2/sqrt(2) + 10*1*1) / 40
    assert rows[0]["virtual_time_s"] == 2.0 and rows[0]["accuracy"] == pytest.approx(1.0)
    assert rows[1]["virtual_time_s"] == 3.0
    assert [c["node_id"] for c in s.history.clients] == [1, 1, 2, 1]
    assert rows[1]["accuracy"] == pytest.approx(1 + (30 * 2 / math.sqrt(2) + 10) / 40, rel=1e-12)
    assert rows[1]["staleness_mean"] == 0.5 and rows[1]["updates_included"] == 2


def test_max_staleness_drops_and_offline_loses(tmp_path):
    """Three in flight, K = 1, sent only when all three slots are free; client 2 is offline
    during [1.5, 2.5) of virtual time.

    t=0  send 1, 2, 3 (arrive 1, 2, 3)   t=1  1 arrives: step 1 (version 1)
    t=2  2's update is due while it is offline: lost
    t=3  3 arrives, sent at version 0, now 1: staleness 1 > max 0: stale; send 1, 2, 3 again
    t=4  1 arrives: step 2, which saw one update included and two dropped
    """
    s = Scripted(tmp_path, 3, ["run.rounds=2", "server.async.concurrency=3", "server.async.buffer_size=1",
                               "server.async.max_staleness=0", "server.async.dispatch_threshold=3"],
                 durations={1: 1.0, 2: 2.0, 3: 3.0}, offline={2: (1.5, 2.5)})
    rows = s.run_steps()
    status = [(c["node_id"], c["dispatch"], c["status"], c["included"]) for c in s.history.clients]
    assert status == [(1, 1, "ok", True), (2, 1, "lost", False), (3, 1, "stale", False), (1, 2, "ok", True)]
    assert [r["virtual_time_s"] for r in rows] == [1.0, 4.0]
    assert rows[1]["updates_dropped"] == 2 and rows[1]["updates_included"] == 1 and rows[1]["clients_dropped"] == 2
    assert rows[1]["energy_j"] == 3.0  # the lost and stale clients' energy is spent all the same
    assert s.counts == {"updates": 4, "included": 2, "lost": 1, "stale": 1, "failed": 0}
    assert s.sent == [(1, 0.0, [1, 2, 3]), (2, 3.0, [1, 2, 3])]


def test_equal_durations_tie_in_dispatch_then_client_order(tmp_path):
    s = Scripted(tmp_path, 4, ["run.rounds=2", "server.async.concurrency=4", "server.async.buffer_size=2",
                               "server.async.dispatch_threshold=4"], durations=dict.fromkeys(range(1, 5), 1.0))
    s.run_steps()
    assert [c["node_id"] for c in s.history.clients] == [1, 2, 3, 4]
    assert [c["server_round"] for c in s.history.clients] == [1, 1, 2, 2]


# ----------------------------------------------------------------------------- never twice in flight
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_a_client_is_never_in_flight_twice(n, conc, k, threshold, seed):
    rng = np.random.default_rng(seed)
    durations = {c: [float(x) for x in rng.exponential(1.0, 8)] for c in range(1, n + 1)}
    fail = {(int(c), int(e)) for c, e in zip(rng.integers(1, n + 1, 10), rng.integers(1, 30, 10), strict=True)}
    offline = {int(c): (float(a), float(a) + 1.0) for c, a in zip(rng.integers(1, n + 1, 2), rng.uniform(0, 4, 2),
                                                                   strict=True)}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        s = Scripted(Path(tmp), n, ["run.rounds=6", f"server.async.concurrency={conc}",
                                    f"server.async.buffer_size={k}", f"server.async.dispatch_threshold={threshold}"],
                     durations=durations, fail=fail, offline=offline, lowest_first=False)
        rows = s.run_steps()  # broadcast asserts that no client in flight is sent work
    assert len(rows) == 6
    times = [r["virtual_time_s"] for r in rows]
    assert times == sorted(times)
    flights: dict[int, list[tuple[float, float]]] = {}
    for c in s.history.clients:
        flights.setdefault(c["node_id"], []).append((c["dispatched_s"], c["arrival_s"]))
    for spans in flights.values():  # one client's flights never overlap
        spans.sort()
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False))
    assert all(c["staleness"] >= 0 for c in s.history.clients)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_running_ahead_of_the_replies_changes_nothing(n, conc, k, threshold, seed):
    """Arrivals are processed while dispatches' clients still train, up to their lower bounds;
    the run is the one that waits for every dispatch at once, step for step."""
    rng = np.random.default_rng(seed)
    durations = {c: [float(x) for x in rng.exponential(1.0, 8)] for c in range(1, n + 1)}
    bounds = {c: float(rng.uniform(0, 1.5)) for c in range(1, n + 1)}  # may exceed a duration: it then is one
    fail = {(int(c), int(e)) for c, e in zip(rng.integers(1, n + 1, 6), rng.integers(1, 30, 6), strict=True)}
    import tempfile

    out = []
    for ahead in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            s = Scripted(Path(tmp), n, ["run.rounds=5", f"server.async.concurrency={conc}",
                                        f"server.async.buffer_size={k}", f"server.async.dispatch_threshold={threshold}"],
                         durations=durations, fail=fail, lowest_first=False)
            s.bounds, s.run_ahead = bounds, ahead
            rows = s.run_steps()
        drop = ("wall_s", "checkpoint_s", "checkpoint_bytes")
        out.append(([{c: v for c, v in r.items() if c not in drop} for r in rows], s.history.clients, s.sent,
                    s.dispatch.most_pending))
    (rows_a, clients_a, sent_a, most_a), (rows_b, clients_b, sent_b, most_b) = out
    assert rows_a == rows_b and clients_a == clients_b and sent_a == sent_b
    assert most_b == 1


def test_the_loop_goes_on_while_clients_train(tmp_path):
    """With lower bounds, several dispatches' clients train at once (their replies not yet
    taken) while the server processes arrivals."""
    s = Scripted(tmp_path, 6, ["run.rounds=4", "server.async.concurrency=4", "server.async.buffer_size=2"],
                 durations={c: 1.0 + 0.1 * c for c in range(1, 7)})
    s.bounds = dict.fromkeys(range(1, 7), 0.9)
    s.run_steps()
    assert s.dispatch.most_pending >= 2
    assert s.dispatch.ahead >= 1  # a dispatch's replies were taken after arrivals processed since it went out


# ----------------------------------------------------------------------------- config
def test_async_settings_need_async_mode():
    with pytest.raises(ConfigError, match="server.mode=async"):
        load_config("quickstart", ["server.async.buffer_size=3"])
    cfg = load_config("quickstart", ["server.mode=async", "server.async.buffer_size=3",
                                     "server.async.staleness=hinge", "server.async.staleness_b=2"])
    assert cfg.server.async_.buffer_size == 3 and '"async"' in cfg.to_json()
    with pytest.raises(ConfigError, match="staleness_b"):
        load_config("quickstart", ["server.mode=async", "server.async.staleness_b=2"])


# ----------------------------------------------------------------------------- against the synchronous loop
BASE = {"simulation.engine": "local", "run.deterministic": True, "run.save_model": True, "data.num_clients": 8,
        "server.fraction": 0.5, "run.rounds": 4, "selection.local_steps": 3, "selection.method": "rs"}


def test_async_with_everything_synchronous_equals_the_wait_all_run(tmp_path):
    sync = ft.run("quickstart", overrides=BASE, out=tmp_path / "sync")
    same = {"server.mode": "async", "server.async.concurrency": 4, "server.async.buffer_size": 4,
            "server.async.dispatch_threshold": 4, "server.async.staleness": "constant"}
    asyn = ft.run("quickstart", overrides={**BASE, **same}, out=tmp_path / "async")
    a, b = pd.read_csv(sync.path / "rounds.csv"), pd.read_csv(asyn.path / "rounds.csv")
    # a round's length is (start + longest) - start here, the longest itself there: the same to the last bit or two
    assert np.allclose(a.round_time_s, b.round_time_s, rtol=1e-12)
    for col in ("server_round", "virtual_time_s", "energy_j", "energy_cum_j", "clients_sampled",
                "clients_ok", "updated"):
        assert a[col].tolist() == b[col].tolist(), col
    assert np.allclose(a.accuracy, b.accuracy, atol=2e-3) and np.allclose(a.loss, b.loss, rtol=1e-4)
    ca, cb = pd.read_csv(sync.path / "clients.csv"), pd.read_csv(asyn.path / "clients.csv")
    for col in ("server_round", "partition_id", "status", "included", "sim_time_s", "sim_energy_j", "num_examples"):
        assert ca[col].tolist() == cb[col].tolist(), col
    assert (cb.staleness == 0).all() and (cb.dispatch == cb.server_round).all()
    with np.load(sync.path / "model.npz") as za, np.load(asyn.path / "model.npz") as zb:
        for key in za.files:
            np.testing.assert_allclose(za[key], zb[key], rtol=1e-4, atol=1e-5)


def test_clients_schedule_by_server_steps_and_strategies_see_their_metrics(tmp_path, monkeypatch):
    """With K = 2 a client goes out on every arrival, a step comes every second one: the dispatch
    numbers (which key the clients' seeds and states) run ahead of the steps, while the clients'
    learning-rate schedule reads the server step their update is for.
    A Flower strategy that reads the clients' losses (q-FedAvg) updates the model every step;
    a strategy is built for K updates a step (DP noise is scaled by it)."""
    import clients.client_app as client_app

    seen: list[tuple[int, int]] = []
    original = client_app.client_round

    def spy(cfg, pid, weights, state, server_round, **kw):
        seen.append((server_round, kw["schedule_round"]))
        return original(cfg, pid, weights, state, server_round, **kw)

    monkeypatch.setattr(client_app, "client_round", spy)
    over = {**BASE, "run.rounds": 4, "server.mode": "async", "server.async.concurrency": 3,
            "server.async.buffer_size": 2, "server.strategy": "qfedavg"}
    r = ft.run("quickstart", overrides=over, out=tmp_path / "q")
    rounds = pd.read_csv(r.path / "rounds.csv")
    assert rounds.updated.all(), rounds.aggregation_error.tolist()
    dispatches = [d for d, _ in seen]
    assert max(dispatches) > 4 >= max(s for _, s in seen)  # more dispatches than steps; the schedule follows steps
    assert [s for _, s in seen] == sorted(s for _, s in seen) and seen[0] == (1, 1)
    cfg = load_config("quickstart", ["server.mode=async", "server.async.concurrency=8"])
    server = AsyncServer(None, cfg, ClientStates(tmp_path / "s", 15, 2))
    assert server.cohort(15) == 4  # K defaults to half the concurrency
