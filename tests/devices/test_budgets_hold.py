"""Energy budgets and batteries bound what a device spends in every round, in both regimes,
warm-up included (it spreads over rounds when a round cannot afford it)."""

import pytest

from fedtitan.config import load_config
from fedtitan.training.client import client_round
from fedtitan.training.setup import setup_for


def _profiles(tmp_path, **fields):
    body = "\n".join(f"{k} = {v}" for k, v in fields.items())
    path = tmp_path / "p.toml"
    path.write_text(f'[devices.tight]\nbase = "rpi4"\n{body}\n')
    return path


def _rounds(cfg, rounds, pid=0):
    g = {k: v.clone() for k, v in setup_for(cfg).model.state_dict().items()}
    state, out = {}, []
    for r in range(1, rounds + 1):
        o = client_round(cfg, pid, g, state, r)
        state, g = o.state, o.state_dict
        out.append(o)
    return out


REGIMES = {
    "streaming": ["selection.method=titan", "selection.local_steps=10"],
    "warmup-loss": ["pruning.method=warmup-loss", "pruning.ratio=0.5"],
    "random-warmup": ["pruning.method=random-warmup", "pruning.ratio=0.5"],
    "adaptive": ["pruning.method=warmup-loss", "pruning.ratio=1.0", "pruning.adaptive=true"],
}


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_no_round_spends_more_than_the_budget(tmp_path, regime):
    cfg = load_config("quickstart", ["data.num_clients=3", "model.name=cnn", "fleet.variation=0",
                                     f"fleet.profiles={_profiles(tmp_path, energy_budget_j=1.2)}",
                                     "fleet.devices=tight", *REGIMES[regime]])
    outs = _rounds(cfg, 8)
    energies = [o.metrics["sim_energy_j"] for o in outs]
    assert max(energies) <= 1.2 + 1e-9, energies
    assert sum(o.metrics["num-examples"] for o in outs) > 0  # it did train within the budget
    if regime != "streaming":
        # the warm-up did not fit one round: it spread over several, then the client pruned and trained
        warm = [o.metrics["streamed"] for o in outs]
        assert warm[0] > 0 and sum(w > 0 for w in warm) >= 2
        assert "kept" in outs[-1].state and outs[-1].metrics["selected"] > 0
        n = len(setup_for(cfg).parts[0])
        assert sum(warm) >= n  # one full warm-up epoch in all
        assert all(o.metrics["status"] in (0.0, 1.0) for o in outs)  # ok or reduced, never declined after spending
        after = [o for o in outs if o.metrics["streamed"] == 0]
        if regime == "adaptive":  # rho sized so that a round after the warm-up trains all it keeps, in budget
            assert after and all(o.metrics["status"] == 0.0 for o in after)
            assert 0 < outs[-1].state["rho"] < 1.0
        else:
            assert all(o.metrics["status"] == 1.0 for o in after)  # the budget cut the epoch short


def test_a_round_that_cannot_afford_anything_declines_before_spending(tmp_path):
    cfg = load_config("quickstart", ["data.num_clients=3", "fleet.variation=0", "pruning.method=warmup-loss",
                                     f"fleet.profiles={_profiles(tmp_path, energy_budget_j=0.001)}",
                                     "fleet.devices=tight"])
    out = _rounds(cfg, 2)
    assert [o.metrics["status"] for o in out] == [2.0, 2.0]  # declined
    assert [o.metrics["sim_energy_j"] for o in out] == [0.0, 0.0] and "kept" not in out[-1].state


@pytest.mark.parametrize("regime", ["streaming", "warmup-loss"])
def test_the_battery_is_never_overdrawn(tmp_path, regime):
    cfg = load_config("quickstart", ["data.num_clients=3", "model.name=cnn", "fleet.variation=0",
                                     f"fleet.profiles={_profiles(tmp_path, battery_j=4.0, energy_budget_j=1.2)}", "fleet.devices=tight",
                                     *REGIMES[regime]])
    g = {k: v.clone() for k, v in setup_for(cfg).model.state_dict().items()}
    state: dict = {}
    level = 4.0
    for r in range(1, 15):
        o = client_round(cfg, 0, g, state, r)
        spent = o.metrics["sim_energy_j"]
        assert spent <= level + 1e-9, (r, spent, level)  # less work (or a decline) when the battery is low
        level -= spent
        state, g = o.state, o.state_dict
        assert o.metrics["battery_j"] == pytest.approx(level) and level >= 0
    # it used the battery until what is left cannot pay a model exchange (0.53 J) and a unit of work: it declines
    assert level < 0.7 and o.metrics["status"] == 2.0 and o.metrics["sim_energy_j"] == 0.0
