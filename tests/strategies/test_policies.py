"""The server's round policies on hand-made replies: who is aggregated, how long the round lasts."""

from __future__ import annotations

import numpy as np

from fedtitan.status import Status
from strategies.fleet import ClientResult, FleetPolicy
from strategies.weights import finite_each


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
    from strategies.messages import error_gist

    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)\n"
           "  Traceback ...\nException ClientAppException occurred. Message: injected client failure (partition 1)\n")
    assert error_gist(ray) == "injected client failure (partition 1)"
    oom = "<class 'ray.exceptions.OutOfMemoryError'>:<'1 worker(s) were killed due to the node running low on memory.\nmore"
    assert error_gist(oom).endswith("running low on memory.") and error_gist("") == ""
    one_line = "<class 'fedtitan.training.faults.InjectedFault'>:<'Message: injected client failure (partition 2)'>"
    assert error_gist(one_line) == "injected client failure (partition 2)"


def _updates(n=5, sizes=((1_200_000,), (3, 7), (900_000,)), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arrays = {f"w{j}": rng.standard_normal(s).astype(np.float32) for j, s in enumerate(sizes)}
        arrays["count"] = np.array(7, dtype=np.int64)  # BatchNorm's num_batches_tracked
        out.append(ClientResult(i, Status.OK, {"num-examples": float(rng.integers(1, 50))}, arrays))
    return out


def test_fedavg_on_the_servers_cores_is_the_same_bits_as_on_one(monkeypatch):
    """FedAvg shares its pieces between threads; each piece is summed the same way, so the
    result is the same bits on 1, 2 or 3 threads (2.1M elements: enough to use them), and it
    is the float64 weighted mean."""
    import strategies.weights as weights

    results = _updates()
    outs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(weights, "_threads", lambda threads=threads: threads)
        outs.append(weights.fedavg(results))
    for other in outs[1:]:
        assert all(np.array_equal(outs[0][k], other[k]) for k in outs[0])
    w = np.array([r.metrics["num-examples"] for r in results])
    w = w / w.sum()
    expect = sum(wi * r.arrays["w2"].astype(np.float64) for wi, r in zip(w, results, strict=True))
    np.testing.assert_allclose(outs[0]["w2"], expect.astype(np.float32), rtol=1e-6)
    assert outs[0]["count"] == 7 and outs[0]["count"].dtype == np.int64


def test_finite_each_finds_nan_and_inf_on_any_thread():
    results = _updates(4)
    results[1].arrays["w0"][123_456] = np.nan
    results[3].arrays["w1"][2, 5] = -np.inf
    assert finite_each([r.arrays for r in results]) == [True, False, True, False]
    assert finite_each([]) == [] and finite_each([results[0].arrays]) == [True]


def test_clients_per_round_samples_an_absolute_number_in_place_of_the_fraction():
    p = FleetPolicy(fraction=0.2, min_clients=2, clients_per_round=7, seed=3)
    assert p.target(100) == 7 and p.keep(50, population=100) == 7 and p.keep(5, population=100) == 5
    assert len(p.sample(list(range(100)), 1)) == 7
    assert FleetPolicy(0.2, 9, clients_per_round=7).target(100) == 9  # min_clients still holds
    assert FleetPolicy(0.2, 2).target(100) == 20  # without it: the fraction, as before
    assert FleetPolicy(0.2, 2, clients_per_round=None).sample(list(range(100)), 1) == \
        FleetPolicy(0.2, 2).sample(list(range(100)), 1)
