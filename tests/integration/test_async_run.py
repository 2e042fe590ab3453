"""Asynchronous runs end to end: a SIGKILL mid-run then ``fedtitan resume`` equals the run
uninterrupted; a Ray sweep over the buffer size, its runs equal to the local engine's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pandas as pd
import pytest

from fedtitan.config import load_config
from simulations.cli import main as cli_main
from simulations.run import run
from tests.integration.test_resume import BASE, ROOT, _env, _random_round, _sets, assert_same_run

pytestmark = pytest.mark.slow

ASYNC = ["server.mode=async", "server.async.concurrency=3", "server.async.buffer_size=2", "selection.method=rs"]


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_an_async_run_killed_mid_run_resumes_exactly(tmp_path, strategy):
    """Killed in a dispatch (clients trained and their states sent back, their updates in
    flight): the checkpoint holds the updates in flight and the resumed run goes on from it."""
    extra = ["server.strategy=fedadam", "server.strategy_options.eta=0.05"] if strategy == "fedadam" else []
    overrides = [*BASE, *ASYNC, *extra]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(load_config("quickstart", overrides), full, quiet=True)
    dispatches = int(pd.read_csv(full / "clients.csv").dispatch.max())
    kill = _random_round(3, dispatches - 1)
    killed = subprocess.run([sys.executable, "-m", "tests.faults", "--kill-at-round", str(kill), "run", "--quiet",
                             "--out", str(cut), *_sets(overrides)], env=_env(), cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (cut / "summary.json").exists()
    assert cli_main(["resume", str(cut), "--quiet"]) == 0
    assert_same_run(full, cut, same_config=False)  # checkpoints hold the updates in flight, wall times included
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["mode"] == "async" and summary["model_version"] == 6


def test_an_async_sweep_through_ray_equals_the_local_engine(tmp_path):
    out = tmp_path / "sw"
    sets = ["data.num_clients=6", "run.rounds=3", "server.fraction=0.5", "selection.local_steps=2",
            "run.deterministic=true", *ASYNC[:2], "selection.method=rs"]
    res = subprocess.run([sys.executable, "-m", "simulations.cli", "sweep", "quickstart", "--grid",
                          "server.async.buffer_size=1,2", "--seeds", "1", "--quiet", "--no-report", "--out", str(out),
                          *_sets(sets)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    idx = pd.read_csv(out / "index.csv")
    assert len(idx) == 2 and (idx.status == "done").all()
    two = next(out / rid for rid in idx.run_id if "buffer_size=2" in rid)
    assert (pd.read_csv(two / "rounds.csv").updates_included == 2).all()
    run(load_config("quickstart", [*sets, "server.async.buffer_size=2", "simulation.engine=local"]),
        tmp_path / "local", quiet=True)
    for name in ("rounds.csv", "clients.csv"):
        a, b = pd.read_csv(two / name), pd.read_csv(tmp_path / "local" / name)
        keep = [c for c in a.columns if "wall" not in c and c not in ("checkpoint_s", "checkpoint_bytes", "node_id")]
        pd.testing.assert_frame_equal(a[keep], b[keep], obj=name)
