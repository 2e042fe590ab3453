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


def test_paths_in_a_file_are_read_from_its_folder_not_the_working_folder(tmp_path, monkeypatch):
    """A fleets file's ``profiles`` and ``trace``, and a config file's own paths, name files
    beside it, whatever folder the run is started from; an override stays relative to the cwd."""
    from pathlib import Path

    from fedtitan.preflight import check_config

    conf = tmp_path / "conf"
    (conf / "fleets").mkdir(parents=True)
    (conf / "fleets" / "mine.toml").write_text('[devices.my-pi]\nbase = "rpi4"\ntrain_flops = 5e9\n')
    (conf / "fleets" / "trace.csv").write_text("partition_id,t_start_s,t_end_s,speed_factor\n0,0,100,0.5\n")
    (conf / "fleets" / "lab.toml").write_text(
        '[fleets.lab]\nmix = { my-pi = 1.0 }\nprofiles = "mine.toml"\ntrace = "trace.csv"\n')
    (conf / "run.toml").write_text('[data]\nnum_clients = 4\n[fleet]\nfile = "fleets/lab.toml"\nname = "lab"\n'
                                   '[fleets.own]\nmix = { my-pi = 1.0 }\nprofiles = "fleets/mine.toml"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = check_config(load_config(str(conf / "run.toml"), []))
    here = (conf / "fleets").resolve()
    assert Path(cfg.fleet.profiles) == here / "mine.toml" and Path(cfg.fleet.trace) == here / "trace.csv"
    assert Path(cfg.fleet.file) == here / "lab.toml"
    own = check_config(load_config(str(conf / "run.toml"), ["fleet.name=own"]))  # the config file's [fleets]
    assert Path(own.fleet.profiles) == here / "mine.toml"
    # from the command line, a relative path is the working folder's
    (elsewhere / "lab.toml").write_text('[fleets.lab]\nmix = { rpi4 = 1.0 }\nprofiles = "none.toml"\n')
    cli = load_config("quickstart", ["fleet.file=lab.toml", "fleet.name=lab"])
    assert Path(cli.fleet.profiles) == elsewhere.resolve() / "none.toml"
