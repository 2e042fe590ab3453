"""Flower strategies through fedtitan, end to end: a 3-round quickstart run with each."""

import json

import pandas as pd
import pytest

from fedtitan.config import load_config
from simulations.run import run

pytestmark = pytest.mark.slow

STRATEGIES = {
    "fedprox": ["server.strategy_options.proximal_mu=0.1"],
    "fedadam": ["server.strategy_options.eta=0.01"],
    "fedyogi": [],
    "fedavgm": ["server.strategy_options.server_momentum=0.9"],
    "krum": ["server.strategy_options.num_malicious_nodes=1"],
    "fedmedian": [],
    "dp-server-fixed": ["server.strategy_options.noise_multiplier=0.1", "server.strategy_options.clipping_norm=5.0"],
    "dp-client-adaptive": ["server.strategy_options.noise_multiplier=0.1",
                           "server.strategy_options.clipped_count_stddev=1.0"],
}


ON_RAY = {"fedadam", "dp-client-adaptive"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_quickstart_with_a_flower_strategy(name, tmp_path):
    # ON_RAY: the weights through Ray's object store (the quickstart MLP would send them in the
    # messages): a Flower strategy reads replies whose weights came from there (FedAdam, as every
    # Flower strategy does, through strategies.aggregate.with_arrays), and the client-side
    # clipping mod reads them from the messages. The others run in-process, weights in messages.
    engine = "ray" if name in ON_RAY else "local"
    cfg = load_config("quickstart", ["run.rounds=3", f"server.strategy={name}", "simulation.arrays=object-store",
                                     f"simulation.engine={engine}", *STRATEGIES[name]])
    summary = run(cfg, tmp_path, quiet=True)
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert rounds.server_round.tolist() == [1, 2, 3] and summary["rounds"] == 3
    assert rounds.updated.all(), rounds.aggregation_error.tolist()
    assert rounds.accuracy.notna().all()
    assert json.loads((tmp_path / "config.json").read_text())["server"]["strategy"] == name
    if name == "fedprox":
        assert (clients.proximal_mu == 0.1).all()  # the strategy's config reached every client
    if name == "dp-client-adaptive":
        assert clients.norm_bit.isin([0, 1]).all()  # clipped on the client, reported for the adaptive norm
