"""The round loop driven in-process: Flower's real ClientApp over the local grid, rows into a list sink.

No Ray, no run folder: the server is handed its sinks, and construction writes nothing.
"""

from __future__ import annotations

import threading

import pytest

from clients.client_app import app as client_app
from fedtitan.config import load_config
from strategies.client_states import ClientStates
from strategies.local_grid import LocalGrid
from strategies.server import FleetServer, fleet_server
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
