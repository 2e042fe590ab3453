"""tests/faults.py reaches every server the launcher builds, and a sweep a signal stopped says so."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "simulation.engine=local", "--set", "data.num_clients=3", "--set", "run.rounds=2",
        "--set", "server.fraction=1.0", "--set", "selection.local_steps=1", "--set", "tracking.report=false"]


def test_kill_at_round_kills_a_sweep(tmp_path):
    """``python -m tests.faults --kill-at-round 2 sweep ...`` SIGKILLs the sweep in its first
    run's round 2, after round 1 was recorded (sweeps build their servers with fleet_server)."""
    out = tmp_path / "sw"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    res = subprocess.run([sys.executable, "-m", "tests.faults", "--kill-at-round", "2", "sweep", "quickstart",
                          "--grid", "selection.method=rs,titan", "--quiet", "--no-report", "--out", str(out), *TINY],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    partial = list(out.glob(".partial-*"))
    assert len(partial) == 1 and len(pd.read_csv(partial[0] / "rounds.csv")) == 1
    assert (pd.read_csv(out / "index.csv").status == "pending").all()


def test_a_sweep_stopped_by_a_signal_between_runs_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """A signal during a simulation group's last run stops the sweep with no run cut off; the
    sweep still says it was interrupted and how to go on."""
    import simulations.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "_run_all", lambda *a, **k: (None, signal.SIGINT))
    _, specs, stopped_by = sweep_mod.sweep("quickstart", ["selection.method=titan,rs"], 1,
                                           ["simulation.engine=local"], tmp_path / "sw", quiet=True)
    assert stopped_by == signal.SIGINT and len(specs) == 2
    out = capsys.readouterr().out
    assert "sweep interrupted with 2 of 2 runs to go; run the same command again to resume" in out
