"""The client's report names its device: a device of ``fleet.profiles`` or a board's
``--device`` TOML used to reach clients.csv as an empty cell (the report sent a catalog index,
-1 for anything outside the catalog), so per-device tables dropped those clients."""

from __future__ import annotations

from fedtitan.config import load_config
from fedtitan.devices.catalog import CATALOG
from fedtitan.status import Status
from fedtitan.training.client import client_round
from fedtitan.training.setup import device_of, setup_for
from fedtitan.wire import ClientReport


def _global(cfg):
    return {k: v.detach().cpu().clone() for k, v in setup_for(cfg).model.state_dict().items()}


def test_a_fleet_profiles_device_is_reported_by_name(tmp_path):
    profiles = tmp_path / "p.toml"
    profiles.write_text('[devices.pixel-lab]\nbase = "jetson-nano-10w"\n')
    cfg = load_config("quickstart", ["data.num_clients=4", "selection.local_steps=1", f"fleet.profiles={profiles}",
                                     "fleet.mix=pixel-lab:0.5,rpi4:0.5"])
    g = _global(cfg)
    reports = [client_round(cfg, pid, dict(g), {}, 1).report for pid in range(4)]
    devices = [r.device for r in reports]
    assert sorted(devices) == ["pixel-lab", "pixel-lab", "rpi4", "rpi4"]  # the mix, half and half
    assert devices == [device_of(cfg, pid).name for pid in range(4)]
    assert all(r.status == Status.OK and r.num_examples > 0 for r in reports)  # they trained
    pixel = reports[devices.index("pixel-lab")]
    numbers, strings = pixel.to_wire()
    assert "pixel-lab" not in CATALOG and "device_id" not in numbers  # no catalog index: a name
    assert strings["device"] == "pixel-lab" and ClientReport.from_wire(numbers, strings) == pixel


def test_a_boards_device_toml_is_reported_by_its_name(tmp_path):
    board = tmp_path / "board.toml"
    board.write_text('[devices.my-orin]\nbase = "orin-nano"\n')
    cfg = load_config("quickstart", ["data.num_clients=2", "selection.local_steps=1"])
    out = client_round(cfg, 0, _global(cfg), {}, 1, device=str(board))
    assert out.report.device == "my-orin"
    assert client_round(cfg, 0, _global(cfg), {}, 1, device="orin-nano").report.device == "orin-nano"


def test_a_fleet_profiles_device_fills_its_cells_in_clients_csv(tmp_path):
    """End to end (in-process engine): every clients.csv row names its device, and the
    per-device cost table counts the custom device's clients."""
    import pandas as pd

    import fedtitan as ft
    from fedtitan.results.analysis import tier_costs

    profiles = tmp_path / "p.toml"
    profiles.write_text('[devices.pixel-lab]\nbase = "jetson-nano-10w"\n')
    ft.run("quickstart", {"simulation.engine": "local", "run.rounds": 2, "data.num_clients": 6, "server.fraction": 1.0,
                          "selection.local_steps": 2, "fleet.profiles": str(profiles),
                          "fleet.mix": {"pixel-lab": 0.5, "rpi4": 0.5}}, tmp_path / "run", quiet=True)
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    assert clients.device.notna().all() and set(clients.device) <= {"pixel-lab", "rpi4"}
    assert "pixel-lab" in set(clients.device)
    tiers = tier_costs(clients, [])
    assert set(tiers.device) == set(clients.device) and tiers.client_rounds.sum() == len(clients)


def test_the_selectors_info_keys_reach_the_report_and_clients_csv(tmp_path):
    """A selector's ``Selection.info`` (the names its ``info_keys`` lists) travels in the report
    as ``info_NAME`` numbers and lands in clients.csv; Titan lists its buffer and coarse forwards."""
    import math

    import pandas as pd

    import fedtitan as ft

    cfg = load_config("quickstart", ["data.num_clients=2", "selection.local_steps=2"])
    report = client_round(cfg, 0, _global(cfg), {}, 1).report
    assert set(report.extra) == {"buffer", "coarse_forwards"} and all(math.isfinite(v) for v in report.extra.values())
    numbers, strings = report.to_wire()
    assert numbers["info_buffer"] == report.extra["buffer"] and ClientReport.from_wire(numbers, strings) == report
    ft.run("quickstart", {"simulation.engine": "local", "run.rounds": 1, "data.num_clients": 3, "server.fraction": 1.0,
                          "selection.local_steps": 2}, tmp_path / "run", quiet=True)
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    assert {"info_buffer", "info_coarse_forwards"} <= set(clients.columns)
    assert (clients.info_buffer > 0).all()


def test_a_selector_without_info_keys_reports_no_extra_numbers():
    cfg = load_config("quickstart", ["data.num_clients=2", "selection.local_steps=1", "selection.method=rs"])
    numbers, _ = client_round(cfg, 0, _global(cfg), {}, 1).report.to_wire()
    assert not [k for k in numbers if k.startswith("info_")]


def test_a_client_that_does_not_train_still_sends_the_info_keys_as_nan():
    """Flower aggregates only replies with equal metric keys: an offline client carries them too."""
    import math

    cfg = load_config("quickstart", ["data.num_clients=2", "selection.local_steps=1"])
    out = client_round(cfg, 0, _global(cfg), {"battery_j": 0.0}, 1, device="phone-midrange").report  # flat battery
    assert out.status == Status.UNAVAILABLE and set(out.extra) == {"buffer", "coarse_forwards"} and all(math.isnan(v) for v in out.extra.values())
