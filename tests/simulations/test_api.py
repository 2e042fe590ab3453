"""The Python API (simulations.api, forwarded by fedtitan) without a simulation: settings, folders, tables (runs themselves: integration/test_api_run.py)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fedtitan
from fedtitan.errors import FedtitanError
from simulations import api


def test_import_fedtitan_loads_neither_flower_nor_ray():
    """``import fedtitan`` loads nothing above the library; ``fedtitan.run`` loads the launcher
    (its one documented forward) but neither Flower nor Ray."""
    code = ("import sys, fedtitan; print(sorted(m for m in ('flwr', 'ray', 'simulations') if m in sys.modules)); "
            "fedtitan.run; print(sorted(m for m in ('flwr', 'ray', 'simulations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "['simulations']"]


def test_package_root_exposes_the_api():
    assert fedtitan.run is api.run and fedtitan.Sweep is api.Sweep and fedtitan.load is api.load
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fedtitan.nope  # noqa: B018


def test_overrides_from_a_dict_are_what_set_takes():
    got = api._override_list({"run.rounds": 3, "run.deterministic": True, "selection.method": "rs",
                              "pruning.ratio": 0.25, "fleet.mix": {"rpi4": 0.5, "orin-nano": 0.5},
                              "fleet.devices": ["rpi4", "orin-nano"]})
    assert got == ["run.rounds=3", "run.deterministic=true", "selection.method=rs", "pruning.ratio=0.25",
                   'fleet.mix={"rpi4" = 0.5, "orin-nano" = 0.5}', 'fleet.devices=["rpi4", "orin-nano"]']
    cfg = api._config("quickstart", {"run.rounds": 3, "fleet.mix": {"rpi4": 0.5, "orin-nano": 0.5}})
    assert cfg.run.rounds == 3 and cfg.fleet.mix == {"rpi4": 0.5, "orin-nano": 0.5}
    assert api._config(cfg, ["run.rounds=4"]).run.rounds == 4  # a Config works as the preset


@pytest.mark.parametrize("bad, match", [
    ("run.rounds=3", "dict or a list"),
    (["run.rounds"], "not key=value"),
    ({"run.rounds": None}, "cannot be None"),
    ({"run.roundz": 3}, "run.rounds"),  # the config's own one-line error, with its suggestion
])
def test_bad_overrides_are_one_line_errors(bad, match):
    with pytest.raises(FedtitanError, match=match) as info:
        api._config("quickstart", bad)
    assert "\n" not in str(info.value)


def test_a_misspelled_name_fails_before_the_run_folder_exists(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(FedtitanError, match="did you mean 'cnn'") as info:
        fedtitan.run("quickstart", {"model.name": "cnnn"}, out=out, quiet=True)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_grid_from_a_dict():
    assert api._grid_items({"selection.method": ["titan", "rs"], "pruning.ratio": [0.2, 0.5]}) == [
        "selection.method=titan,rs", "pruning.ratio=0.2,0.5"]
    assert api._grid_items({"fleet.mix": [{"rpi4": 1.0}]}) == ["fleet.mix=rpi4:1.0"]
    assert api._grid_items(["selection.method=titan,rs"]) == ["selection.method=titan,rs"]
    with pytest.raises(FedtitanError, match="must be a list"):
        api._grid_items({"selection.method": "titan"})


def test_load_says_what_a_folder_is_not(tmp_path):
    with pytest.raises(FedtitanError, match="does not exist"):
        api.load(tmp_path / "nothing")
    with pytest.raises(FedtitanError, match="neither a fedtitan run folder"):
        api.load(tmp_path)


def _write_run(d, seed, method, accs, rounds_only=False):
    d.mkdir(parents=True)
    cfg = api._config("quickstart", {"run.seed": seed, "selection.method": method}).model_dump(mode="json")
    (d / "config.json").write_text(json.dumps(cfg))
    n = len(accs)
    pd.DataFrame({"server_round": np.arange(1, n + 1), "accuracy": accs, "loss": 1.0,
                  "virtual_time_s": 10.0 * np.arange(1, n + 1),
                  "energy_cum_j": 5.0 * np.arange(1, n + 1)}).to_csv(d / "rounds.csv", index=False)
    (d / "summary.json").write_text(json.dumps({"rounds": n, "final_accuracy": accs[-1]}))


@pytest.fixture
def fake_sweep(tmp_path):
    rows = []
    curves = {("titan", 0): [0.3, 0.5, 0.7], ("titan", 1): [0.3, 0.6, 0.8], ("rs", 0): [0.2, 0.4, 0.6],
              ("rs", 1): [0.2, 0.5, 0.6]}
    for (m, s), accs in curves.items():
        rid = f"selection.method={m}__seed={s}"
        _write_run(tmp_path / rid, s, m, accs)
        rows.append({"run_id": rid, "selection.method": m, "seed": s, "status": "done", "path": rid, "wall_s": 1.0})
    rows.append({"run_id": "pending-one", "selection.method": "cis", "seed": 0, "status": "pending",
                 "path": "pending-one", "wall_s": None})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    return tmp_path


def test_a_sweep_folder_gives_its_tables(fake_sweep):
    sw = api.load(fake_sweep)
    assert isinstance(sw, api.Sweep) and sw.params == ["selection.method"]
    assert "4 of 5 runs done" in repr(sw)
    assert sorted(sw.runs) == ["selection.method=rs__seed=0", "selection.method=rs__seed=1",
                               "selection.method=titan__seed=0", "selection.method=titan__seed=1"]
    fa = sw.final_accuracy().set_index("selection.method")
    assert fa.loc["titan", "final_acc_mean"] == pytest.approx(0.75) and fa.loc["rs", "runs"] == 2
    paired = sw.paired("selection.method", "titan", "rs").iloc[0]
    assert paired.seeds == 2 and paired.final_diff_mean == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert paired.final_diff_ci95 == pytest.approx(12.706 * 0.0707107 / np.sqrt(2), rel=1e-3)
    tta = sw.time_to_accuracy().set_index("selection.method")  # target: rs's mean final accuracy, 0.6
    assert tta.attrs["target"] == pytest.approx(0.6)
    # titan: seed 0 crosses 0.6 halfway between 20 s (0.5) and 30 s (0.7), seed 1 at 20 s
    assert tta.loc["titan", "tta_s"] == pytest.approx((25 + 20) / 2)
    assert tta.attrs["verdict"].startswith("titan reached the target accuracy 0.600 first")
    with pytest.raises(FedtitanError, match="no runs with value 'ocs'"):
        sw.paired("selection.method", "titan", "ocs")
    # a setting set once (not swept) is still a column: it has one value, so the pair is refused
    with pytest.raises(FedtitanError, match="pruning.ratio has no runs with value '0.2'; it has 1.0"):
        sw.paired("pruning.ratio", "0.2", "0.5")
    fig = sw.plot()
    assert fig.axes and fig.axes[0].get_lines()
    assert sw.report().name == "report.html"


def test_a_run_folder_gives_its_tables(tmp_path):
    _write_run(tmp_path / "r", 0, "titan", [0.1, 0.2])
    run = api.load(tmp_path / "r")
    assert isinstance(run, api.Run) and run.finished and run.config.selection.method == "titan"
    assert list(run.rounds.accuracy) == [0.1, 0.2] and run.clients.empty and run.fleet.empty
    assert repr(run) == f"Run({str(tmp_path / 'r')!r}, 2 rounds, final accuracy 0.2000)"
    assert "<table>" in run._repr_html_()
    with pytest.raises(FedtitanError, match="unknown plot kind 'curves'; choose one of accuracy-time"):
        run.plot("curves")
    (tmp_path / "r" / "rounds.csv").write_text("server_round,accuracy\n1,0.5\n")
    assert list(run.rounds.accuracy) == [0.1, 0.2] and list(run.refresh().rounds.accuracy) == [0.5]


def test_fedtitan_errors_print_as_one_line_in_ipython(capsys):
    pytest.importorskip("IPython")
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    api.short_errors(True)
    try:
        ip.run_cell("from fedtitan.errors import FedtitanError\nraise FedtitanError('dataset foo not found')")
        err = capsys.readouterr().err
        assert "FedtitanError: dataset foo not found" in err and "Traceback" not in err
    finally:
        api.short_errors(False)
