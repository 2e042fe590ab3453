"""The small-model benchmark: its generated data, and its plain loop training what fedtitan sampled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from simulations.benchmarks.small_model import VARIANTS, make_data, overrides


def test_generated_data_has_the_variants_shape_and_classes(tmp_path):
    for variant, (shape, classes, _) in VARIANTS.items():
        make_data(tmp_path / f"{variant}.npz", variant, n_train=300, n_test=50)
        with np.load(tmp_path / f"{variant}.npz") as z:
            assert z["x"].shape == (300, *shape) and z["x"].dtype == np.uint8 and z["x_test"].shape == (50, *shape)
            assert int(z["num_classes"]) == classes and z["y"].max() < classes


def test_the_plain_loop_trains_the_sampled_clients_round_by_round(tmp_path):
    """The child the benchmark starts: one wall time per round of the clients.csv it is given."""
    data = tmp_path / "d.npz"
    make_data(data, "mlp", n_train=500)
    clients = tmp_path / "clients.csv"
    pd.DataFrame({"server_round": [1, 1, 2, 2, 3], "partition_id": [0, 1, 2, 3, 4]}).to_csv(clients, index=False)
    out = subprocess.run([sys.executable, "-m", "simulations.benchmarks.small_model", "--plain-child", "--overrides",
                          json.dumps(overrides(data, "mlp", 50, 3)), "--clients-csv", str(clients)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["walls"]) == 3 and all(w > 0 for w in got["walls"])


def test_the_breakdown_times_every_client_and_its_parts_add_up():
    out = subprocess.run([sys.executable, "-m", "simulations.benchmarks.small_model", "--breakdown", "--clients", "50",
                          "--rounds", "2"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout[out.stdout.index("{"):])
    assert got["clients_timed"] == 2 * 20  # 20 clients a round
    parts = ["train_steps_ms", "select_ms", "client_round_setup_ms", "reply_and_state_ms", "engine_messaging_ms"]
    assert all(got[p] > 0 for p in parts)
    assert sum(got[p] for p in parts) <= got["client_ms"] + 1e-6  # parts of the client's time, nothing counted twice


def test_startup_figures_from_a_process_wall_and_its_rounds():
    """startup_s: the wall outside the rounds; startup_and_first_round_s adds round 1's excess
    over a steady round (the median of rounds 2 to the last but one)."""
    from simulations.benchmarks.small_model import _walls

    got = _walls(20.0, pd.Series([5.0, 0.2, 0.4, 0.3, 1.0]))
    assert got == {"round_wall_s": 0.3, "startup_s": 13.1, "first_round_s": 5.0, "startup_and_first_round_s": 17.8}


def test_the_pfl_run_needs_an_interpreter_with_pfl():
    """``--pfl-python`` names an interpreter that has pfl-research; one without it ends the
    benchmark at once with one line saying how to make one (pfl is no dependency of ours)."""
    import importlib.util

    without_pfl = [sys.executable] if importlib.util.find_spec("pfl") is None else []  # (ours has none)
    for python in [*without_pfl, "/no/such/python"]:
        out = subprocess.run([sys.executable, "-m", "simulations.benchmarks.small_model", "--pfl-python", python],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "cannot import pfl and torch" in out.stderr and "pip install" in out.stderr


def test_the_pfl_run_trains_the_zoos_model():
    """pfl's model is the zoo's, written again in plain torch: the same parameters in the same
    order and shapes, and the same outputs once the zoo's weights are copied in."""
    import torch

    from fedtitan.models import zoo
    from simulations.benchmarks.pfl_small_model import model

    for name, (shape, classes, _) in VARIANTS.items():
        ours, theirs = getattr(zoo, name)(shape, classes), model(name, shape, classes)
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
        with torch.no_grad():
            for dst, src in zip(theirs.parameters(), ours.parameters(), strict=True):
                dst.copy_(src)
        x = torch.rand(4, *shape)
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-6)
