import collections
from dataclasses import replace

import pytest

from fedtitan.devices import (
    CATALOG,
    Battery,
    FleetSpec,
    MeasuredMeter,
    adaptive_ratio,
    affordable_units,
    check_memory,
    device_for,
    device_names,
    get_profile,
    load_profiles,
    profile_toml,
    static_round,
    step_time,
    streaming_round,
)
from fedtitan.devices.budgets import training_memory_bytes
from fedtitan.devices.cost import coarse_cost, comm_cost, train_cost
from fedtitan.devices.meters import Ina3221Counter, RaplCounter
from fedtitan.errors import ConfigError
from fedtitan.models import build_model, count_forward_flops


def test_catalog_has_required_profiles_with_sources():
    need = {"jetson-nano-5w", "jetson-nano-10w", "jetson-tx2", "xavier-nx", "orin-nano", "orin-nx", "agx-orin",
            "rpi4", "rpi5", "phone-midrange"}
    assert need <= set(CATALOG)
    for p in CATALOG.values():
        assert p.sources, p.name


def test_nano_calibration_anchor():
    """Titan: a Jetson Nano trains one batch of 16 on MobileNetV1 (224x224) in about 20 s."""
    flops = count_forward_flops(build_model("mobilenet_v1", (3, 224, 224), 1000), (3, 224, 224))
    assert 1.0e9 < flops < 1.3e9  # 569 M MACs
    t = train_cost(CATALOG["jetson-nano-10w"], flops, 16).time_s
    assert 15.0 <= t <= 25.0


def test_cost_formulas_by_hand():
    p = replace(CATALOG["rpi4"], train_flops=1e9, select_flops=2e9, train_w=6.0, select_w=4.0, idle_w=2.0,
                radio_w=1.0, uplink_bytes_per_s=1e6, downlink_bytes_per_s=2e6)
    tr = train_cost(p, 1e6, 10)  # 3 * 1e6 * 10 / 1e9 = 0.03 s, (6-2) W -> 0.12 J above idle
    assert tr.time_s == pytest.approx(0.03) and tr.energy_j == pytest.approx(0.12)
    co = coarse_cost(p, 2e5, 100)  # 2e7 / 2e9 = 0.01 s, (4-2) W -> 0.02 J
    assert co.time_s == pytest.approx(0.01) and co.energy_j == pytest.approx(0.02)
    cm = comm_cost(p, 2e6, 1e6)  # 1 s down + 1 s up at 1 W
    assert cm.time_s == pytest.approx(2.0) and cm.energy_j == pytest.approx(2.0)
    assert step_time(3.0, 2.0, 0.5, pipelined=True) == 3.5
    assert step_time(3.0, 2.0, 0.5, pipelined=False) == 5.0


def test_streaming_round_pipelined_vs_sequential():
    p = replace(CATALOG["jetson-nano-10w"], train_flops=1e9, select_flops=1e9, train_w=5.0, select_w=4.0, idle_w=1.0,
                radio_w=1.0, uplink_bytes_per_s=1e9, downlink_bytes_per_s=1e9)
    kw = dict(forward_flops=1e6, block_flops=1e5, steps=3, batch_size=10, velocity=100, candidates=30,
              model_bytes=0.0)
    seq = streaming_round(p, pipelined=False, **kw)
    pipe = streaming_round(p, pipelined=True, **kw)
    # per step: train 3e7/1e9 = 0.03 s; select (1e7 + 3e7)/1e9 = 0.04 s
    assert seq.time_s == pytest.approx(3 * 0.07)
    assert pipe.time_s == pytest.approx(3 * 0.04)
    # energy = idle * wall + 3 * (0.03 * 4 + 0.04 * 3)
    assert seq.energy_j == pytest.approx(1.0 * 0.21 + 3 * (0.12 + 0.12))
    assert pipe.energy_j == pytest.approx(1.0 * 0.12 + 3 * (0.12 + 0.12))


def test_camel_arithmetic_is_charged():
    from fedtitan.selection.selectors import camel_flops

    assert camel_flops(10, 100, 3072) == 100 * 3072 + 3 * 100 * 3072 * 11  # mean + 11 distance passes
    assert camel_flops(10, 4, 2) == 4 * 2 + 3 * 4 * 2 * 5  # k capped at the candidates
    p = replace(CATALOG["rpi4"], select_flops=1e9)
    kw = dict(forward_flops=1e6, block_flops=1e5, steps=3, batch_size=10, velocity=100, candidates=100,
              model_bytes=0.0, pipelined=False, coarse=False, gradient_selection=False)
    free, charged = streaming_round(p, **kw), streaming_round(p, extra_select_flops=2e7, **kw)
    assert charged.phases["select"].time_s == pytest.approx(3 * 0.02)
    assert charged.time_s - free.time_s == pytest.approx(3 * 0.02)


def test_static_round_linear_in_samples():
    p = CATALOG["orin-nano"]
    costs = [static_round(p, forward_flops=2e7, train_samples=n, model_bytes=0).energy_j for n in (100, 200, 300)]
    assert costs[2] - costs[1] == pytest.approx(costs[1] - costs[0])


def test_fleet_deterministic_and_respects_mix():
    spec = FleetSpec.from_mix({"jetson-nano-10w": 0.4, "orin-nano": 0.3, "rpi4": 0.3}, size=20)
    names = device_names(spec, seed=7)
    assert collections.Counter(names) == {"jetson-nano-10w": 8, "orin-nano": 6, "rpi4": 6}
    assert names == device_names(spec, seed=7)
    assert names != device_names(spec, seed=8)
    a, b = device_for(spec, 7, 3), device_for(spec, 7, 3)
    assert a == b
    units = [device_for(spec, 7, i) for i in range(20) if names[i] == "rpi4"]
    assert len({u.train_flops for u in units}) == len(units)  # no two identical
    with pytest.raises(ConfigError, match="did you mean 'rpi4'"):
        device_names(FleetSpec.from_mix({"rpi44": 1.0}, size=2), 0)
    listed = FleetSpec(size=3, devices=("rpi4", "rpi5"), variation=0.0)
    assert device_names(listed, 0) == ["rpi4", "rpi5", "rpi4"]


def test_budget_reduces_or_declines():
    assert affordable_units(None, 1.0, 2.0, 5).status == "full"
    d = affordable_units(10.0, 2.0, 3.0, 5)  # (10 - 2) / 3 = 2.67 -> 2 steps
    assert (d.status, d.units) == ("reduced", 2)
    assert affordable_units(1.0, 2.0, 3.0, 5).status == "declined"
    assert affordable_units(100.0, 2.0, 3.0, 5).status == "full"


def test_battery_runs_out():
    b = Battery(10.0)
    assert b.spend(4.0) == 4.0 and b.available
    assert b.spend(8.0) == 6.0 and not b.available
    assert Battery(None).available


def test_adaptive_ratio_fits_budget():
    p = replace(CATALOG["rpi4"], energy_budget_j=None)
    kw = dict(rho=0.8, n_samples=1000, epochs=1, forward_flops=2e7, model_bytes=1e5)
    assert adaptive_ratio(p, **kw) == 0.8
    rho = adaptive_ratio(p, budget_j=20.0, **kw)
    assert 0 < rho < 0.8
    cost = static_round(p, forward_flops=2e7, train_samples=int(rho * 1000), model_bytes=1e5)
    assert cost.energy_j <= 20.0 + 1e-6


def test_memory_check_names_the_device():
    model = build_model("cnn", (3, 32, 32), 10)
    need = training_memory_bytes(model, (3, 32, 32), 64)
    tiny = replace(CATALOG["jetson-nano-10w"], memory_bytes=need // 2)
    with pytest.raises(ConfigError, match="jetson-nano-10w.*batch 64"):
        check_memory(tiny, need, 64)
    check_memory(CATALOG["jetson-nano-10w"], need, 64)


def test_profiles_from_toml(tmp_path):
    text = profile_toml(CATALOG["rpi5"]).replace("[devices.rpi5]", "[devices.my-board]")
    f = tmp_path / "d.toml"
    f.write_text(text + '\n[devices.fast-nano]\nbase = "jetson-nano-10w"\ntrain_flops = 5e9\n')
    profiles = load_profiles(f)
    assert profiles["my-board"].train_flops == CATALOG["rpi5"].train_flops
    assert profiles["fast-nano"].train_flops == 5e9 and profiles["fast-nano"].idle_w == CATALOG["jetson-nano-10w"].idle_w
    (tmp_path / "bad.toml").write_text('[devices.x]\nbase = "rpi4"\nwarp = 9\n')
    with pytest.raises(ConfigError, match="unknown fields"):
        load_profiles(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="unknown device"):
        get_profile("nope")


# ------------------------------------------------------------------ meters on fake sysfs


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_rapl_wraparound(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    _write(zone / "energy_uj", "999000000\n")
    _write(zone / "max_energy_range_uj", "1000000000\n")
    _write(tmp_path / "intel-rapl:0:0" / "energy_uj", "5\n")  # sub-zone: not double counted
    c = RaplCounter(tmp_path)
    assert c.zones == [str(zone)]
    c.start()
    _write(zone / "energy_uj", "2000000\n")  # wrapped: 1e9 - 999e6 + 2e6 = 3e6 uJ = 3 J
    assert c.stop() == pytest.approx(3.0)


def test_rapl_unreadable_gives_none(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    _write(zone / "energy_uj", "100\n")
    c = RaplCounter(tmp_path)
    c.start()
    (zone / "energy_uj").write_text("garbage")
    assert c.stop() is None


def test_ina3221_hwmon_and_iio(tmp_path):
    d = tmp_path / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    _write(d / "in1_input", "5000\n")  # mV
    _write(d / "curr1_input", "1000\n")  # mA -> 5 W
    _write(d / "in2_input", "1000\n")
    _write(d / "curr2_input", "500\n")  # 0.5 W
    c = Ina3221Counter(tmp_path)
    assert c.name == "ina3221" and c.power_w() == pytest.approx(5.5)
    meter = MeasuredMeter(counter=c)
    meter.start()
    import time

    time.sleep(0.2)
    m = meter.stop()
    assert m.source == "ina3221" and m.energy_j == pytest.approx(5.5 * m.time_s, rel=0.1)

    root2 = tmp_path / "old"
    _write(root2 / "bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power0_input", "3000\n")  # mW
    _write(root2 / "bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power1_input", "1000\n")
    c2 = Ina3221Counter(root2)
    assert c2.name == "ina3221-iio" and c2.power_w() == pytest.approx(4.0)


def test_no_energy_source_reports_unavailable(tmp_path):
    meter = MeasuredMeter(sys_root=tmp_path)
    meter.counter = None  # jtop may exist on a Jetson; here we assert the no-source path
    meter.start()
    m = meter.stop()
    assert m.energy_j is None and m.source == "none" and m.time_s >= 0


def test_coarse_filter_is_billed_for_what_it_scores():
    """Titan's filter re-scores its kept candidates with the current model (carry_over +
    refresh): a step forwards v new + the kept ones through the first blocks, and is billed so."""
    p = replace(CATALOG["rpi4"], select_flops=1e9)
    kw = dict(forward_flops=1e6, block_flops=1e5, steps=1, batch_size=10, velocity=100, candidates=30,
              model_bytes=0.0, pipelined=False, gradient_selection=False)
    new_only = streaming_round(p, **kw)
    with_kept = streaming_round(p, coarse_samples=122, **kw)
    assert new_only.phases["select"].time_s == pytest.approx(100 * 1e5 / 1e9)
    assert with_kept.phases["select"].time_s == pytest.approx(122 * 1e5 / 1e9)


def test_titan_client_round_bills_the_kept_candidates_it_rescored():
    import numpy as np

    from fedtitan.config import load_config
    from fedtitan.training.client import client_round
    from fedtitan.training.setup import setup_for

    base = ["data.num_clients=3", "fleet.variation=0", "fleet.devices=rpi4", "selection.local_steps=3"]
    costs = {}
    for carry in ("true", "false"):
        cfg = load_config("quickstart", [*base, f"selection.carry_over={carry}"])
        setup = setup_for(cfg)
        state = {k: v.clone() for k, v in setup.model.state_dict().items()}
        out = client_round(cfg, 0, state, {}, 1)
        costs[carry] = out.metrics["sim_select_s"]
    # steps 2 and 3 re-score what step 1 and 2 kept (buffer 20 minus consumed): strictly more
    assert costs["true"] > costs["false"]
    v, buf = 40, 20
    assert costs["true"] / costs["false"] < (3 * v + 2 * buf) / (3 * v) + 1e-9
    assert np.isfinite(costs["true"])


def test_old_link_rate_names_are_read_with_one_notice(tmp_path, caplog):
    """``uplink_bps`` / ``downlink_bps`` were always bytes per second: read under their new
    names, with one warning giving the new name and the unit."""
    from fedtitan.devices import catalog

    catalog._renames_told.clear()
    f = tmp_path / "old.toml"
    f.write_text('[devices.a]\nbase = "rpi4"\nuplink_bps = 1.25e6\n'
                 '[devices.b]\nbase = "rpi4"\nuplink_bps = 2.5e6\ndownlink_bps = 5e6\n')
    with caplog.at_level("WARNING", logger="fedtitan.devices.catalog"):
        profiles = load_profiles(f)
    assert profiles["a"].uplink_bytes_per_s == 1.25e6
    assert profiles["b"].downlink_bytes_per_s == 5e6
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2 and all("bytes per second" in n for n in notes)
    assert "uplink_bytes_per_s" in notes[0]
    f.write_text('[devices.a]\nbase = "rpi4"\nuplink_bps = 1.0\nuplink_bytes_per_s = 2.0\n')
    with pytest.raises(ConfigError, match="give uplink_bytes_per_s only"):
        load_profiles(f)
