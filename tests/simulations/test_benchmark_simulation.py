"""The overhead benchmark's compute floor: what it replays and times."""

from __future__ import annotations

import pandas as pd
import torch

from fedtitan.config import load_config
from simulations.benchmarks.simulation import replay_floor


def test_the_floor_replays_each_rounds_clients_and_the_central_evaluations_asked_for():
    """Client seconds for every round in the table, an evaluation only for the rounds that had
    one (their wall time holds it), and this process's thread count given back afterwards."""
    cfg = load_config("quickstart", ["data.num_clients=3", "model.name=cnn", "model.width=8", "server.eval_samples=200",
                                     "selection.local_steps=1"])
    clients = pd.DataFrame({"server_round": [1, 1, 2, 2, 3], "partition_id": [0, 1, 2, 0, 1]})
    threads = torch.get_num_threads()
    client_s, eval_s = replay_floor(cfg, clients, 1, frozenset({2}))
    assert sorted(client_s) == [1, 2, 3] and all(s > 0 for s in client_s.values())
    assert list(eval_s) == [2] and eval_s[2] > 0
    assert torch.get_num_threads() == threads
