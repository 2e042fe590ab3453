"""Plugins without editing fedtitan: the worked example of docs/extending.md, a tiny package
under tests/plugins/fedtitan-example, loaded by ``module:Class`` and, once installed, by its
entry-point names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedtitan.config import load_config
from fedtitan.errors import ConfigError
from fedtitan.preflight import check_config
from fedtitan.training.client import client_round
from fedtitan.training.setup import setup_for
from strategies.registry import build_strategy, check_strategy

PLUGIN = Path(__file__).parent / "plugins" / "fedtitan-example"
BASE = ["data.num_clients=3", "run.rounds=2", "server.fraction=1.0", "data.min_samples=20", "selection.local_steps=2"]


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package pip-installed into a folder of its own (as a user's pip would)."""
    src = tmp_path_factory.mktemp("src") / "fedtitan-example"
    shutil.copytree(PLUGIN, src)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    return target


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(installed))  # entry points are found through sys.path
    return installed


def test_module_class_selector_runs_with_its_own_options(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    cfg = load_config("quickstart", [*BASE, "selection.method=fedtitan_example.selectors:MarginSelector",
                                     "selection.options.temperature=2.0"])
    g = {k: v.clone() for k, v in setup_for(cfg).model.state_dict().items()}
    out = client_round(cfg, 0, g, {}, 1)
    assert out.metrics["selected"] == 2 * 10 and out.state["selector"] == {"selections": 2}
    assert 0 <= out.metrics["info_mean_margin"] <= 1  # its Selection.info, as its info_keys names it
    assert out.metrics["sim_select_s"] > 0  # forward_candidates = True: the cost model bills its forward
    with pytest.raises(ConfigError, match="unknown option 'temprature'.*did you mean 'temperature'"):
        check_config(load_config("quickstart", ["selection.method=fedtitan_example.selectors:MarginSelector",
                                                "selection.options.temprature=2.0"]))


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_pkg.sel:Sel", "cannot import module 'no_such_pkg.sel'"),
    ("my_selectors:MySelector", "Python finds no 'my_selectors'; put the folder holding 'my_selectors' on "
                                "PYTHONPATH (on every Ray node) or install it as a package (with a "
                                "'fedtitan.selectors' entry point)"),
    ("fedtitan.selection.selectors:NoSuchSelector", "has no 'NoSuchSelector'"),
    ("fedtitan.selection.selectors:take", "does not implement the StreamingSelector protocol (missing: observe"),
    ("fedtitan.selection.selectors", "name the class too: fedtitan.selection.selectors:ClassName"),
    ("titna", "did you mean 'titan'"),
])
def test_bad_selector_plugins_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError) as exc:
        check_config(load_config("quickstart", [f"selection.method={spec}"]))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_installed_plugins_are_found_by_entry_point_name(on_path):
    cfg = load_config("quickstart", [*BASE, "selection.method=margin", "server.strategy=normbound",
                                     "server.strategy_options.max_norm=3.5"])
    check_strategy(cfg)
    from fedtitan.models import AdaptedModel, build_model

    assert isinstance(build_model("tinyvit", (1, 8, 8), 10, dim=16), AdaptedModel)  # a fedtitan.models entry point
    strategy = build_strategy(cfg, num_sampled=3)
    assert type(strategy).__name__ == "FedAvgNormBound" and strategy.max_norm == 3.5
    assert strategy.fraction_train == 1.0  # fedtitan's sampling knobs reach the plugin's FedAvg base
    with pytest.raises(ConfigError, match="did you mean 'max_norm'"):
        check_strategy(load_config("quickstart", ["server.strategy=normbound", "server.strategy_options.max_nrm=1"]))


@pytest.mark.slow
def test_a_run_with_installed_plugins(installed, tmp_path):
    """`fedtitan run --set selection.method=margin --set server.strategy=normbound` once the
    package is installed (here: on PYTHONPATH, which Ray's workers inherit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(tmp_path / "run")]
    for o in [*BASE, "selection.method=margin", "server.strategy=normbound", "server.strategy_options.max_norm=50"]:
        args += ["--set", o]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert rounds.server_round.tolist() == [1, 2] and rounds.updated.all()


VIT = "fedtitan_example.models:make_vit"


def windows_npz(path: Path, n: int = 240, channels: int = 3, steps: int = 20, classes: int = 4) -> Path:
    """Sensor-like windows ``(channels, steps)``: a sine per class, noise, six subjects."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    t = np.linspace(0, 2 * np.pi, steps)
    x = np.sin(np.outer(y + 1, t))[:, None, :] + rng.normal(0, 0.3, (n, channels, steps))
    np.savez(path, x=x.astype(np.float32), y=y, groups=rng.integers(0, 6, n))
    return path


@pytest.mark.slow
def test_a_run_trains_an_installed_plugin_model_on_windows(installed, tmp_path):
    """`fedtitan run --set model.name=windowgru` (an entry point of the installed example
    package) with Titan on an npz of sensor windows, through Ray."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    data = windows_npz(tmp_path / "windows.npz")
    args = [sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(tmp_path / "run")]
    for o in [*BASE, "model.name=windowgru", "model.options.hidden=16", "data.dataset=npz", f"data.path={data}",
              "data.partition=iid", "run.save_model=true"]:
        args += ["--set", o]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert rounds.server_round.tolist() == [1, 2] and rounds.updated.all()
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    assert (clients.selected > 0).all() and (clients.sim_select_s > 0).all()  # Titan selected on the GRU
    with np.load(tmp_path / "run" / "model.npz") as z:
        assert z["net.gru.weight_ih_l0"].shape == (48, 3) and z["net.out.1.weight"].shape == (4, 16)


@pytest.mark.slow
def test_the_python_api_trains_a_module_factory_model(tmp_path, monkeypatch):
    import fedtitan as ft

    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    r = ft.run("quickstart", overrides={"model.name": VIT, "model.options.dim": 16, "simulation.engine": "local",
                                        "run.rounds": 3}, out=tmp_path / "run", quiet=True)
    rounds = r.rounds
    assert rounds.server_round.tolist() == [1, 2, 3] and rounds.accuracy.iloc[-1] > 0.2  # 10 classes: above chance


@pytest.mark.slow
def test_a_plugin_model_run_killed_mid_round_resumes_exactly(tmp_path, monkeypatch):
    from tests.integration.test_resume import assert_same_run, cut_and_resume

    src = str(PLUGIN / "src")
    monkeypatch.syspath_prepend(src)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    full, cut = cut_and_resume(tmp_path, [f"model.name={VIT}", "model.options.dim=16"], 3)
    assert_same_run(full, cut)
