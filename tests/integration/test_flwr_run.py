"""`flwr run .`: the same apps, Flower-native, on the local simulation federation."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _kill_started_after(t0: float) -> None:
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= t0 - 1 and ("flower-superlink" in cmd or "flower-superexec" in cmd
                                                 or "flwr-simulation" in cmd):
            try:
                p.kill()
            except psutil.Error:
                pass


def test_flwr_run_native(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_config = f'overrides="data.num_clients=3 run.rounds=2 server.fraction=1.0" out="{out}"'
    t0 = time.time()
    try:
        res = subprocess.run([str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream", "--run-config",
                              run_config, "--federation-config", "num-supernodes=3"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        rounds = pd.read_csv(out / "rounds.csv")
        assert rounds.server_round.tolist() == [1, 2] and rounds.clients_ok.tolist() == [3, 3]
    finally:
        _kill_started_after(t0)
