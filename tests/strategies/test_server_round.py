"""The round loop driven in-process: Flower's real ClientApp over the local grid, rows into a list sink.

No Ray, no run folder: the server is handed its sinks, and construction writes nothing.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from clients.client_app import app as client_app
from fedtitan.config import load_config
from strategies.client_states import ClientStates
from strategies.local_grid import LocalGrid
from strategies.loops import fleet_server
from strategies.server import FleetServer
from strategies.sinks import ListSink

pytestmark = pytest.mark.slow  # trains a few steps on real data

OVERRIDES = ["simulation.engine=local", "run.deterministic=true", "data.num_clients=4", "server.fraction=0.5",
             "run.rounds=2", "selection.local_steps=2", "run.checkpoint_every=0"]


def _server(tmp_path, sink, **kwargs):
    cfg = load_config("quickstart", OVERRIDES)
    states = ClientStates(tmp_path / "states", cfg.data.num_clients, keep_checkpoints=2)
    return FleetServer(LocalGrid(client_app, 1), cfg, states, sinks=[sink], pool=True, **kwargs)


def test_two_rounds_over_the_local_grid_land_in_a_list_sink(tmp_path):
    sink = ListSink()
    summary = _server(tmp_path, sink).run()
    assert [r.server_round for r in sink.rounds] == [1, 2]
    for r in sink.rounds:
        assert r.row["clients_sampled"] == 2 and r.row["clients_ok"] == 2 and r.row["updated"]
        assert len(r.clients) == 2 and {c["status"] for c in r.clients} == {"ok"}
        assert {c["server_round"] for c in r.clients} == {r.server_round}
        assert r.fleet is None  # a static fleet has no timeline
    assert sink.rounds[1].row["virtual_time_s"] > sink.rounds[0].row["virtual_time_s"] > 0
    assert sink.rounds[1].row["energy_cum_j"] == pytest.approx(sum(r.row["energy_j"] for r in sink.rounds))
    assert summary == sink.summary and summary["rounds"] == 2 and not summary["interrupted"]
    assert summary["final_accuracy"] == sink.rounds[1].row["accuracy"]
    assert [p.name for p in tmp_path.iterdir()] == ["states"]  # the clients' states, nothing else


def test_a_stop_set_mid_round_ends_the_run_after_that_round(tmp_path):
    stop, seen = threading.Event(), []

    def hook(rnd, results):  # an after_collect hook: the replies of the round are in
        seen.append((rnd, len(results)))
        stop.set()

    sink = ListSink()
    summary = _server(tmp_path, sink, stop=stop, after_collect=[hook]).run()
    assert seen == [(1, 2)] and [r.server_round for r in sink.rounds] == [1]
    assert summary["interrupted"] and summary["rounds"] == 1 and "failed" not in summary


def test_constructing_a_server_for_a_run_folder_writes_nothing(tmp_path):
    cfg = load_config("quickstart", OVERRIDES)
    fleet_server(LocalGrid(client_app, 1), cfg, tmp_path / "run", progress=lambda row: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("per_message", [1, 3])
def test_clients_in_one_message_or_each_in_its_own_give_the_same_run(tmp_path, per_message):
    """A round's clients dealt to a worker in one message (the default: all of them to the
    one local worker), three to a message, or one each: the same rows, failures and drops
    included, each failed client alone."""
    faults = ["faults.exception=0.2", "faults.drop=0.3", "server.fraction=1.0", "run.rounds=3"]
    rows = {}
    for n in (0, per_message):
        cfg = load_config("quickstart", [*OVERRIDES, *faults, f"simulation.clients_per_message={n}"])
        sink = ListSink()
        states = ClientStates(tmp_path / f"states-{n}", cfg.data.num_clients, keep_checkpoints=2)
        FleetServer(LocalGrid(client_app, 1), cfg, states, sinks=[sink], pool=True).run()
        rows[n] = ([{k: v for k, v in r.row.items() if "wall" not in k and k != "checkpoint_s"} for r in sink.rounds],
                   [{k: v for k, v in c.items() if "wall" not in k} for r in sink.rounds for c in r.clients])
    assert str(rows[0]) == str(rows[per_message])  # (str: NaN equals NaN)
    statuses = [c["status"] for c in rows[0][1]]
    assert {"ok", "failed", "dropped"} <= set(statuses)
    assert all(c["error"].startswith(("injected client failure", "client dropped mid-round"))
               for c in rows[0][1] if c["status"] != "ok")


def test_only_messages_that_share_weights_and_config_go_together():
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from fedtitan.wire import CLIPPING_NORM_KEY, STATE_KEY
    from strategies.dispatch import _groups

    LocalGrid(client_app, 1)  # sets Flower's task identity, as a runtime does
    w, other = ArrayRecord([np.zeros(2)]), ArrayRecord([np.ones(2)])

    def msg(arrays, node, mtype="train", **config):
        return Message(RecordDict({"config": ConfigRecord({"server-round": 1, **config}), "arrays": arrays}),
                       dst_node_id=node, message_type=mtype)

    a, b = msg(w, 1), msg(w, 2, **{STATE_KEY: b"state of 2"})  # a client's own state does not part them
    c = msg(w, 3, **{"proximal-mu": 0.1})  # another config
    d = msg(other, 4)  # other weights
    e = msg(w, 5, **{CLIPPING_NORM_KEY: 1.0})  # a client mod's work: alone
    f = msg(w, 6, mtype="evaluate")
    g = msg(w, 7)
    groups = [[m.metadata.dst_node_id for m in grp] for grp in _groups([a, b, c, d, e, f, g])]
    assert groups == [[1, 2, 7], [3], [4], [5], [6]]


def test_client_states_reach_the_disk_before_each_checkpoint(tmp_path, monkeypatch):
    """A round's states are written in one file as its replies come in, without an fsync;
    that file is fsynced (in the background) before the checkpoint that refers to it is saved."""
    import os

    from fedtitan.checkpoint import FileSyncer
    from simulations.api import run
    from strategies.checkpoints import Checkpointer

    events: list[str] = []
    real_fsync, real_wait, real_save = os.fsync, FileSyncer.wait, Checkpointer.save

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        events.append("state" if "/clients/" in name else "other")
        real_fsync(fd)

    def save(self, rnd, blob):
        events.append(f"save {rnd}")
        real_save(self, rnd, blob)

    def wait(self):
        real_wait(self)
        events.append("waited")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Checkpointer, "save", save)
    monkeypatch.setattr(FileSyncer, "wait", wait)
    run("quickstart", overrides=[o for o in OVERRIDES if not o.startswith("run.checkpoint_every")], out=str(tmp_path),
        quiet=True)
    saves = [i for i, e in enumerate(events) if e.startswith("save")]
    assert [events[i] for i in saves] == ["save 1", "save 2"]
    for i in saves:  # the states stored before a save were synced, and waited for, just before it
        assert events[i - 1] == "waited"
    # one file a round (two clients each), one fsync a round
    assert events[:saves[0]].count("state") == 1 and events[saves[0]:saves[1]].count("state") == 1
