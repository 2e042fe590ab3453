"""Living fleets: dynamics as pure functions of (seed, client, virtual time), traces checked
line by line, and the cost model, sampling and Titan's buffer reacting to them."""

import numpy as np
import pandas as pd
import pytest

from fedtitan.config import load_config
from fedtitan.devices import CATALOG
from fedtitan.devices.cost import auto_buffer_size, train_cost
from fedtitan.devices.dynamics import (
    DiurnalDynamics,
    Factors,
    RandomWalkDynamics,
    build_dynamics,
    load_trace,
)
from fedtitan.errors import ConfigError
from fedtitan.training.client import client_round
from fedtitan.training.setup import setup_for

DEVICES = ["rpi4", "orin-nano", "rpi4", "jetson-nano-10w"]


def _trace(tmp_path, text):
    p = tmp_path / "t.csv"
    p.write_text(text)
    return p


def test_same_seed_same_dynamics_and_other_seeds_differ():
    for cls in (DiurnalDynamics, RandomWalkDynamics):
        kw = {"period_s": 100.0, "slot_s": 5.0} if cls is DiurnalDynamics else {"step_s": 5.0, "sigma": 0.3}
        a, b, c = cls(seed=1, **kw), cls(seed=1, **kw), cls(seed=2, **kw)
        times = np.linspace(0, 400, 81)
        fa = [a.factors(p, t) for p in range(4) for t in times]
        assert fa == [b.factors(p, t) for p in range(4) for t in times]
        assert fa != [c.factors(p, t) for p in range(4) for t in times]
        # evaluation order does not matter (a pure function of its inputs)
        assert [a.factors(3, t) for t in times[::-1]] == [b.factors(3, t) for t in times][::-1]
        assert all(0 < f.select_share <= 1 and f.speed_factor > 0 for f in fa)
        assert len({f.available for f in fa}) == 2  # both on and off occur


def test_speed_factor_half_doubles_the_simulated_train_time(tmp_path):
    slow = _trace(tmp_path, "partition_id,t_start_s,t_end_s,speed_factor\n1,0,1000,0.5\n")
    base = ["data.num_clients=3", "fleet.variation=0", "fleet.devices=rpi4", "selection.method=rs"]
    out = {}
    for name, extra in (("normal", []), ("slow", [f"fleet.trace={slow}"])):
        cfg = load_config("quickstart", [*base, *extra])
        g = {k: v.clone() for k, v in setup_for(cfg).model.state_dict().items()}
        out[name] = [client_round(cfg, pid, {k: v.clone() for k, v in g.items()}, {}, 1).metrics for pid in (0, 1)]
    assert out["slow"][1]["sim_train_s"] == pytest.approx(2 * out["normal"][1]["sim_train_s"])
    assert out["slow"][1]["speed_factor"] == 0.5
    assert out["slow"][0]["sim_train_s"] == pytest.approx(out["normal"][0]["sim_train_s"])  # others untouched


def test_auto_buffer_grows_with_the_idle_share_and_never_drops_below_b():
    p = CATALOG["rpi4"]
    kw = dict(forward_flops=2e7, block_flops=2e6, batch_size=10, velocity=100, buffer_max=200)
    sizes = [auto_buffer_size(Factors(select_share=s).apply(p), **kw) for s in (0.0, 0.05, 0.25, 0.5, 0.75, 1.0)]
    assert sizes == sorted(sizes) and sizes[0] == 10 and sizes[-1] > 10
    assert all(k >= 10 for k in sizes)
    # the formula by hand at share 1: K = floor((t_train * S - block * v) / (block + fwd))
    t = train_cost(p, 2e7, 10).time_s
    assert sizes[-1] == min(200, max(10, int((t * p.select_flops - 2e6 * 100) // (2e6 + 2e7))))
    assert auto_buffer_size(p, **{**kw, "buffer_max": 12}) <= 12


def test_auto_buffer_in_a_client_round_is_recorded(tmp_path):
    busy = _trace(tmp_path, "partition_id,t_start_s,t_end_s,select_share\n0,0,1000,0.05\n1,0,1000,1.0\n")
    cfg = load_config("quickstart", ["data.num_clients=3", "fleet.variation=0", "fleet.devices=jetson-nano-10w",
                                     "selection.buffer_size=auto", f"fleet.trace={busy}"])
    g = {k: v.clone() for k, v in setup_for(cfg).model.state_dict().items()}
    m0 = client_round(cfg, 0, {k: v.clone() for k, v in g.items()}, {}, 1).metrics
    m1 = client_round(cfg, 1, {k: v.clone() for k, v in g.items()}, {}, 1).metrics
    assert cfg.selection.batch_size <= m0["buffer_size"] < m1["buffer_size"] <= cfg.selection.buffer_max


@pytest.mark.parametrize(("text", "message"), [
    ("device,t_start_s,speed_factor\nrpi4,0,1\n", "missing column(s) t_end_s"),
    ("t_start_s,t_end_s,speed_factor\n0,1,1\n", "missing column(s) device or partition_id"),
    ("device,t_start_s,t_end_s\nrpi4,0,1\n", "one of available, speed_factor"),
    ("device,t_start_s,t_end_s,speed_factor\nrpi4,-1,5,1\n", "line 2: need 0 <= t_start_s < t_end_s"),
    ("device,t_start_s,t_end_s,speed_factor\nrpi4,5,5,1\n", "need 0 <= t_start_s < t_end_s"),
    ("device,t_start_s,t_end_s,speed_factor\nrpi4,0,10,1\nrpi4,5,20,0.5\n", "intervals overlap for 'rpi4'"),
    ("device,t_start_s,t_end_s,speed_factor\nrpi5,0,10,1\n", "device 'rpi5' is not in this fleet; did you mean 'rpi4'?"),
    ("partition_id,t_start_s,t_end_s,available\n7,0,10,1\n", "partition_id 7 is not a client of this fleet (0..3)"),
    ("device,t_start_s,t_end_s,available\nrpi4,0,10,2\n", "available must be 0 or 1"),
    ("device,t_start_s,t_end_s,select_share\nrpi4,0,10,1.5\n", "select_share must be in [0, 1]"),
    ("device,t_start_s,t_end_s,speed,speed_factor\nrpi4,0,10,1,1\n", "unknown column(s) speed"),
])
def test_bad_traces_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        load_trace(_trace(tmp_path, text), DEVICES)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_trace_rows_of_a_client_win_over_its_kinds_and_over_the_model(tmp_path):
    path = _trace(tmp_path, "device,partition_id,t_start_s,t_end_s,speed_factor,available\n"
                            "rpi4,,0,10,0.5,\n,2,0,5,0.25,\n,2,5,10,,0\n")
    fd = build_dynamics("static", {}, 0, DEVICES, str(path))
    assert fd.factors(0, 1.0).speed_factor == 0.5 and fd.factors(2, 1.0).speed_factor == 0.25
    assert fd.factors(2, 6.0) == Factors(False, 0.5, 1.0, 1.0)  # kind's speed, own availability
    assert fd.factors(1, 1.0) == Factors() and fd.factors(0, 10.0) == Factors()  # outside: the model (static)
    with pytest.raises(ConfigError, match="did you mean 'period_s'"):
        build_dynamics("diurnal", {"perod_s": 10}, 0, DEVICES)
    with pytest.raises(ConfigError, match="select_share_min <= select_share_max"):
        build_dynamics("diurnal", {"select_share_min": 0.9, "select_share_max": 0.5}, 0, DEVICES)


@pytest.mark.slow
def test_devices_offline_in_rounds_1_to_5_are_never_sampled_then(tmp_path):
    """Identical devices and random selection: every round lasts the same c seconds of
    virtual time, so a trace can switch half the fleet off for exactly rounds 1-5."""
    from simulations.run import run

    base = ["data.num_clients=8", "fleet.variation=0", "fleet.devices=rpi4", "selection.method=rs",
            "server.fraction=1.0", "run.rounds=8", "selection.local_steps=2"]
    run(load_config("quickstart", [*base, "run.rounds=1"]), tmp_path / "pilot", quiet=True)
    c = float(pd.read_csv(tmp_path / "pilot" / "rounds.csv").round_time_s.iloc[0])
    rows = "".join(f"{p},0,{4.5 * c},0\n" for p in range(4))
    trace = _trace(tmp_path, "partition_id,t_start_s,t_end_s,available\n" + rows)
    run(load_config("quickstart", [*base, f"fleet.trace={trace}"]), tmp_path / "run", quiet=True)
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert rounds.round_time_s.to_numpy() == pytest.approx(c)  # the premise
    early = clients[clients.server_round <= 5]
    assert set(early.partition_id) == {4, 5, 6, 7} and early.included.all()
    late = clients[clients.server_round > 5]
    assert set(late.partition_id) == set(range(8))
    fleet = pd.read_csv(tmp_path / "run" / "fleet.csv")  # every device's state per round, for the timeline
    off = fleet[(fleet.partition_id < 4) & (fleet.server_round <= 5)]
    assert (off.available == 0).all() and (off.sampled == 0).all() and len(fleet) == 8 * 8


def _as_factors(table, i):
    return Factors(bool(table.available[i]), float(table.speed_factor[i]), float(table.select_share[i]),
                   float(table.bandwidth_factor[i]))


@pytest.mark.parametrize("kind, options", [
    ("diurnal", {"period_s": 100.0, "slot_s": 7.0, "speed_min": 0.4, "bandwidth_min": 0.3, "availability_min": 0.2}),
    ("random-walk", {"step_s": 5.0, "sigma": 0.3}),
])
def test_every_device_at_once_equals_each_device_alone_bit_for_bit(tmp_path, kind, options):
    """What the server asks each round (factors_many) against the per-client path the clients
    use: over slots, back in time, repeated moments, in a shuffled order, and under a trace."""
    devices = [DEVICES[i % 4] for i in range(60)]
    trace = _trace(tmp_path, "device,partition_id,t_start_s,t_end_s,speed_factor,available\n"
                             "orin-nano,,20,60,0.5,\n,7,0,30,,0\n")
    rng = np.random.default_rng(0)
    for trace_path in (None, str(trace)):
        many, one = (build_dynamics(kind, options, 3, devices, trace_path) for _ in range(2))
        for t in [0.0, 3.5, 6.99, 7.0, 55.5, 55.5, 20.0, 250.0, 13.0]:
            ids = rng.permutation(60)[:45].tolist()
            table = many.factors_many(ids, t)
            got = [_as_factors(table, i) for i in range(len(ids))]
            assert got == [one.factors(p, t) for p in ids]
            assert table.available.dtype == bool and 0 < table.available.sum() <= len(ids)
    if kind == "diurnal":  # the draws that the table keeps are the current slot's only
        assert set(many.model._memo["draws"]) <= set(range(60)) and many.model._memo["slot"] == int(13.0 // 7.0)


def test_fleet_csv_holds_every_device_or_only_the_sampled_ones(tmp_path, monkeypatch):
    import strategies.rows as rows
    from simulations.run import run

    base = ["simulation.engine=local", "run.rounds=3", "data.num_clients=8", "server.fraction=0.5",
            "fleet.dynamics=diurnal", "fleet.dynamics_options.slot_s=0.2"]
    counts = {}
    for timeline in ("all", "sampled", "auto"):
        out = tmp_path / timeline
        run(load_config("quickstart", [*base, f"fleet.timeline={timeline}"]), out, quiet=True)
        fleet, rounds = pd.read_csv(out / "fleet.csv"), pd.read_csv(out / "rounds.csv")
        counts[timeline] = fleet.groupby("server_round").size().tolist()
        if timeline == "sampled":
            assert (fleet.sampled == 1).all()
            assert counts[timeline] == rounds.clients_sampled.tolist()
            full = pd.read_csv(tmp_path / "all" / "fleet.csv")
            pd.testing.assert_frame_equal(fleet.reset_index(drop=True),
                                          full[full.sampled == 1].reset_index(drop=True))
        monkeypatch.setattr(rows, "TIMELINE_ALL_MAX", 4)  # "auto" then finds 8 devices too many
    assert counts["all"] == [8, 8, 8] and counts["auto"] == counts["sampled"] and sum(counts["sampled"]) < 24


def _walk_one_client_at_a_time(model, partition_id, n):
    """The random walk as it was first written (one client, one step at a time): the
    definition the batched paths must equal bit for bit."""
    rng = np.random.default_rng([model.seed, partition_id, 0x5A1C])
    bounds = np.log(model._bounds())
    lo, hi = bounds[:, 0], bounds[:, 1]
    x, on = hi.copy(), True
    out = np.empty((n, 4))
    for i in range(n):
        u = rng.random()
        on = (u >= model.p_leave) if on else (u < model.p_return)
        x = x + model.sigma * rng.standard_normal(3)
        width = np.maximum(hi - lo, 1e-12)
        x = lo + np.abs(((x - lo) + width) % (2 * width) - width)
        out[i] = (float(on), *np.exp(x))
    return out


def _rows(table):
    return np.column_stack([table.available, table.speed_factor, table.select_share, table.bandwidth_factor])


def test_random_walk_paths_made_in_batches_equal_the_one_client_walk():
    """300 clients walk as arrays (numpy's generators stepped together: fedtitan.devices.streams),
    three go on alone (numpy's generators one at a time): both give the one-client walk's rows."""
    from fedtitan.devices.streams import vectorised

    assert vectorised()  # this numpy's draws are the arrays' (else every batch walks one at a time)
    walk = RandomWalkDynamics(seed=5, step_s=1.0, sigma=0.4, p_leave=0.3, p_return=0.4, speed_min=0.2)
    ids = list(range(300))
    ref = {p: _walk_one_client_at_a_time(walk, p, 151) for p in ids}
    assert np.array_equal(_rows(walk.factors_many(ids, 10.0)), np.array([ref[p][10] for p in ids]))
    assert np.array_equal(_rows(walk.factors_many([3, 299, 7], 150.0)), np.array([ref[p][150] for p in (3, 299, 7)]))
    assert walk._walks.done[walk._walks.slot_of[[3, 299, 7, 4]]].tolist() == [151, 151, 151, 11]
    assert np.array_equal(_rows(walk.factors_many(ids, 150.0)), np.array([ref[p][150] for p in ids]))
    assert 0 < ref[0][:, 0].mean() < 1  # the clients come and go


def test_random_walk_keeps_only_where_each_walk_stands_and_goes_on_or_back_bit_for_bit():
    """Memory per client does not grow with virtual time: a client keeps its generator's state,
    its position and on/off, nothing of its path. Going on, jumping ahead, and going back (the
    walk starts again) all give the one-client walk's rows, for a batch walked as arrays and
    for a few clients walked one at a time."""
    walk = RandomWalkDynamics(seed=9, step_s=1.0, sigma=0.3, p_leave=0.2, p_return=0.3)
    few, many = [0, 1, 2, 40], [0, 1, 2, 40, *range(100, 164)]
    ref = {p: _walk_one_client_at_a_time(walk, p, 1200) for p in many}
    for step in [*range(0, 200, 7), 1000, 1001, 1100, 999, 300, 5, 1199]:
        for ids in (many, few):
            got = _rows(walk.factors_many(ids, float(step) + 0.5))
            assert np.array_equal(got, np.array([ref[p][step] for p in ids])), step
            assert walk._walks.done[walk._walks.slot_of[ids]].tolist() == [step + 1] * len(ids)
    assert walk._walks.size == len(many) and len(walk._walks.done) < 2 * len(many)
    # one client asked alone, back and forth, after the batch moved on
    for step in (3, 1150, 64, 63):
        f = walk.factors(2, float(step))
        assert (f.available, f.speed_factor, f.select_share, f.bandwidth_factor) == (
            bool(ref[2][step][0] >= 0.5), *ref[2][step][1:])


def test_random_walk_table_within_one_step_is_reused_but_never_shared():
    walk = RandomWalkDynamics(seed=2, step_s=10.0, sigma=0.5)
    ids = [5, 1, 9]
    first = walk.factors_many(ids, 1.0)
    first.speed_factor[:] = -1.0  # what a caller (a trace) writes into its table
    first.available[:] = False
    again = walk.factors_many(ids, 9.9)  # the same step: the rows gathered before, unharmed
    assert [_as_factors(again, i) for i in range(3)] == [walk.factors(p, 9.9) for p in ids]
    later = walk.factors_many(ids, 10.0)
    assert [_as_factors(later, i) for i in range(3)] == [walk.factors(p, 10.0) for p in ids]
