"""Trackers fed by a real simulation: each round logged as it lands, the report at the end."""

import glob
from pathlib import Path

import pandas as pd
import pytest

from fedtitan.config import load_config
from simulations.run import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard", "wandb"])
def test_quickstart_logs_to_tracker(backend, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    # the in-process engine: what a tracker receives does not depend on Ray (the Ray path is
    # tests/integration/test_simulation.py's)
    run(load_config("quickstart", ["run.rounds=2", f"tracking.backend={backend}", "simulation.engine=local"]), out,
        quiet=True)
    rounds = pd.read_csv(out / "rounds.csv")
    assert (out / "report.html").is_file()  # tracking.report: the run's report, written and logged
    if backend == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        (r,) = client.search_runs([client.get_experiment_by_name("fedtitan").experiment_id])
        history = client.get_metric_history(r.info.run_id, "accuracy")
        assert [m.value for m in history] == pytest.approx(rounds.accuracy.tolist())
        assert any(k.startswith("tier/") for k in r.data.metrics)
        assert {"report.html", "clients.csv", "config.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
    elif backend == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "tensorboard"))
        acc.Reload()
        assert [e.value for e in acc.Scalars("round/accuracy")] == pytest.approx(rounds.accuracy.tolist())
    else:
        assert glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
        assert not glob.glob(str(out / "wandb" / "offline-run-*" / "logs" / "*error*"))


def test_sweep_runs_are_tracked_under_their_run_ids(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from simulations.sweep import sweep

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep("quickstart", ["selection.method=rs"], 1, ["run.rounds=1", "tracking.backend=mlflow", "tracking.report=false",
                                                   "simulation.engine=local"],
          tmp_path / "sw", quiet=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'sw' / 'mlflow.db'}")  # one database per sweep
    (r,) = client.search_runs([client.get_experiment_by_name("fedtitan").experiment_id])
    assert r.info.run_name == "selection.method=rs__seed=0"  # not the .partial- folder it was written in
    assert r.data.tags["fedtitan.run_dir"] == str((tmp_path / "sw" / "selection.method=rs__seed=0").resolve())


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard", "wandb"])
def test_a_resumed_run_continues_the_same_tracker_run(backend, tmp_path, monkeypatch):
    """Killed mid-round 3 and resumed: the tracker holds one run with every round once."""
    import os
    import signal
    import subprocess
    import sys

    from simulations.cli import main as cli_main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    sets = [a for o in ["run.rounds=4", "simulation.engine=local", f"tracking.backend={backend}",
                        "tracking.report=false"] for a in ("--set", o)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    killed = subprocess.run([sys.executable, "-m", "tests.faults", "--kill-at-round", "3",  # tests/faults.py
                             "run", "--quiet", "--out", str(out), *sets],
                            env=env, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert cli_main(["resume", str(out), "--quiet"]) == 0
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds.server_round.tolist() == [1, 2, 3, 4]
    if backend == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        (r,) = client.search_runs([client.get_experiment_by_name("fedtitan").experiment_id])
        history = client.get_metric_history(r.info.run_id, "accuracy")
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert [m.value for m in history] == pytest.approx(rounds.accuracy.tolist())
        assert r.info.status == "FINISHED"
    elif backend == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "tensorboard"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("round/accuracy")] == [1, 2, 3, 4]
        assert [e.value for e in acc.Scalars("round/accuracy")] == pytest.approx(rounds.accuracy.tolist())
    else:
        runs = glob.glob(str(out / "wandb" / "offline-run-*"))
        ids = {p.rsplit("-", 1)[1] for p in runs}
        assert len(runs) == 2 and len(ids) == 1  # the resumed process wrote to the same W&B run id
