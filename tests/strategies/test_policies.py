"""The server's round policies on hand-made replies: who is aggregated, how long the round lasts."""

from __future__ import annotations

from fedtitan.status import Status
from strategies.fleet import ClientResult, FleetPolicy


def _replies(times):
    return [ClientResult(i, Status.OK, metrics={"sim_time_s": t}) for i, t in enumerate(times)]


def test_first_k_aggregates_fraction_of_the_fleet_from_an_over_committed_sample():
    """50 devices, fraction 0.2: keep 10, sample ceil(10 x 1.3) = 13, aggregate the 10 fastest.
    (A bug applied the fraction twice and kept 2 of 13.)"""
    p = FleetPolicy(fraction=0.2, min_clients=1, policy="first-k", over_commit=0.3, seed=0)
    nodes = list(range(50))
    assert p.keep(50) == 10
    sampled = p.sample(nodes, server_round=1)
    assert len(sampled) == 13 and len(set(sampled)) == 13
    times = [float(t) for t in range(13, 0, -1)]  # node 12 is fastest (1 s), node 0 slowest (13 s)
    results = _replies(times)
    included, round_s = p.include(results, p.keep(50))
    assert sorted(r.node_id for r in included) == list(range(3, 13))
    assert round_s == 10.0  # the 10th fastest reply ends the round
    assert [r.status for r in results[:3]] == [Status.STRAGGLER] * 3


def test_first_k_on_a_living_fleet_keeps_fraction_of_the_whole_fleet():
    p = FleetPolicy(fraction=0.2, min_clients=1, policy="first-k", over_commit=0.3, seed=0)
    up = list(range(0, 50, 2))  # 25 of 50 available
    assert p.keep(len(up), population=50) == 10
    assert len(p.sample(up, 3, population=50)) == 13
    assert p.keep(8, population=50) == 8  # fewer available than the fraction asks: all of them
    assert len(p.sample(list(range(8)), 3, population=50)) == 8


def test_deadline_and_wait_all():
    results = _replies([0.5, 2.0, 1.0])
    included, round_s = FleetPolicy(0.2, 1, "deadline", deadline_s=1.2).include(results, 3)
    assert [r.node_id for r in included] == [0, 2] and round_s == 1.2 and results[1].status == Status.STRAGGLER
    included, round_s = FleetPolicy(0.2, 1, "wait-all").include(_replies([0.5, 2.0, 1.0]), 3)
    assert len(included) == 3 and round_s == 2.0


def test_error_gist_finds_the_clients_own_message():
    from strategies.server_app import error_gist

    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)\n"
           "  Traceback ...\nException ClientAppException occurred. Message: injected client failure (partition 1)\n")
    assert error_gist(ray) == "injected client failure (partition 1)"
    oom = "<class 'ray.exceptions.OutOfMemoryError'>:<'1 worker(s) were killed due to the node running low on memory.\nmore"
    assert error_gist(oom).endswith("running low on memory.") and error_gist("") == ""
