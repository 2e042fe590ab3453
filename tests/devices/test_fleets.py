"""Named fleets: fleet.name selects a table of fleet settings (built-in, a fleets file's, a preset's)."""

import pandas as pd
import pytest

from fedtitan.config import load_config
from fedtitan.devices.fleets import BUILTIN_FLEETS
from fedtitan.errors import ConfigError


def test_a_builtin_fleet_replaces_the_presets_and_explicit_settings_win():
    cfg = load_config("quickstart", ["fleet.name=jetson-lab"])
    assert cfg.fleet.name == "jetson-lab" and cfg.fleet.mix == BUILTIN_FLEETS["jetson-lab"]["mix"]
    phones = load_config("quickstart", ["fleet.name=phones", "fleet.dynamics=static"])
    assert phones.fleet.mix == {"phone-midrange": 1.0} and phones.fleet.variation == 0.1
    assert phones.fleet.dynamics == "static"  # --set fleet.KEY wins over the named fleet


def test_fleets_from_a_preset_and_from_a_file(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[run]\nrounds = 2\n[fleet]\nname = "lab"\nvariation = 0.3\n'
                      '[fleets.lab]\ndevices = ["orin-nano", "rpi4"]\n[fleets.edge-mix]\nmix = { rpi5 = 1.0 }\n')
    cfg = load_config(str(preset), [])
    assert cfg.fleet.devices == ["orin-nano", "rpi4"] and cfg.fleet.variation == 0.05  # the preset's [fleet] replaced
    assert load_config(str(preset), ["fleet.name=edge-mix"]).fleet.mix == {"rpi5": 1.0}  # the preset's wins
    fleets = tmp_path / "fleets.toml"
    fleets.write_text('[fleets.nanos]\nmix = { "jetson-nano-5w" = 1.0 }\ndynamics = "random-walk"\n')
    cfg = load_config("quickstart", [f"fleet.file={fleets}", "fleet.name=nanos"])
    assert cfg.fleet.mix == {"jetson-nano-5w": 1.0} and cfg.fleet.dynamics == "random-walk"
    assert cfg.fleet.file == str(fleets)


def test_named_fleet_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown fleet 'phone'; did you mean 'phones'\? Fleets: jetson-lab, "):
        load_config("quickstart", ["fleet.name=phone"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[fleets.lab]\nmix = { rpi4 = 1.0 }\nrounds = 5\n')
    with pytest.raises(ConfigError, match="fleet 'lab' sets 'rounds', which is not a fleet setting"):
        load_config("quickstart", [f"fleet.file={bad}", "fleet.name=lab"])
    preset = tmp_path / "p.toml"
    preset.write_text('[fleet]\nname = "x"\n[fleets.x]\nselection = { method = "rs" }\n')
    with pytest.raises(ConfigError, match="fleet 'x' sets 'selection'"):
        load_config(str(preset), [])
    with pytest.raises(ConfigError, match="fleet.file: .* not found"):
        load_config("quickstart", [f"fleet.file={tmp_path / 'none.toml'}", "fleet.name=x"])


def test_a_sweep_across_named_fleets_names_and_indexes_its_runs_by_fleet(tmp_path):
    from simulations.sweep import sweep

    root, specs, _ = sweep("quickstart", ["fleet.name=edge-mix,pi-cluster", "selection.method=titan,rs"], 1,
                        ["run.rounds=1", "data.num_clients=4", "simulation.engine=local"], tmp_path / "sw",
                        quiet=True)
    index = pd.read_csv(root / "index.csv")
    assert sorted(index["fleet.name"].unique()) == ["edge-mix", "pi-cluster"] and (index.status == "done").all()
    run = root / "fleet.name=pi-cluster__selection.method=rs__seed=0"
    devices = set(pd.read_csv(run / "clients.csv").device)
    assert devices <= {"rpi4", "rpi5"}
    from fedtitan.results.report import build_report

    path, table = build_report(root)
    assert set(table["fleet.name"]) == {"edge-mix", "pi-cluster"}  # time to accuracy per fleet
    page = path.read_text()
    assert "Per fleet: accuracy vs virtual time and vs energy" in page
    tiers = page[page.index("Per device tier"):]
    assert "pi-cluster" in tiers and "rpi5" in tiers  # device tiers within each fleet


def test_results_tables_read_a_sweep_across_fleets_per_fleet(tmp_path, capsys):
    from simulations.papers import results_tables
    from simulations.sweep import sweep

    sweep("quickstart", ["fleet.name=edge-mix,pi-cluster", "selection.method=titan,rs"], 2,
          ["run.rounds=2", "data.num_clients=4", "simulation.engine=local"], tmp_path / "sw", quiet=True)
    results_tables.sweep(tmp_path, "sw")
    out = capsys.readouterr().out
    assert "target accuracy" in out and out.count("| edge-mix |") >= 2 and out.count("| pi-cluster |") >= 2
    assert "edge-mix: titan minus rs, paired by seed (0, 1)" in out
    assert "pi-cluster: titan minus rs, paired by seed (0, 1)" in out
    assert "per device tier within each fleet" in out and (tmp_path / "sw-per-fleet.png").is_file()
