"""Sampling a living fleet asks each client's state as one array (no per-client Python each
round) and draws the same clients as the per-client formulation it replaced."""

import numpy as np

from fedtitan.devices.dynamics import build_dynamics
from strategies.fleet import FleetPolicy
from strategies.sampling import Sampler


def test_a_living_fleet_samples_as_the_per_client_lists_did():
    n = 500
    nodes = [10_000 + 3 * p for p in range(n)]  # node ids need not be partition ids
    partition_of = {node: p for p, node in enumerate(nodes)}
    policy = FleetPolicy(fraction=0.05, min_clients=2, seed=4)
    sampler = Sampler(policy, build_dynamics("random-walk", {"step_s": 1.0, "p_leave": 0.3}, 4, ["rpi4"] * n))
    reference = build_dynamics("random-walk", {"step_s": 1.0, "p_leave": 0.3}, 4, ["rpi4"] * n)
    for rnd, t in enumerate([0.0, 0.5, 3.0, 40.0], start=1):
        got = sampler.sample(rnd, nodes, partition_of, t)
        factors = reference.factors_many([partition_of[node] for node in nodes], t)
        up = [node for node, a in zip(nodes, factors.available.tolist(), strict=True) if a]
        assert got.sampled == policy.sample(up, rnd, population=n)
        assert got.keep == policy.keep(len(up), n) and np.array_equal(got.factors.available, factors.available)
    ids = sampler.partition_ids(nodes, partition_of)
    assert sampler.partition_ids(nodes, partition_of) is ids and ids.tolist() == list(range(n))
    assert sampler.partition_ids(list(nodes), partition_of) is not ids  # other nodes: asked again


def test_a_fleet_given_as_a_range_is_sampled_as_its_list():
    policy = FleetPolicy(fraction=0.001, min_clients=1, seed=2, policy="first-k", over_commit=0.5)
    assert policy.sample(range(1, 100_001), 3) == policy.sample(list(range(1, 100_001)), 3)
