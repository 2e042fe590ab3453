"""`--ray-address`: attach to a running local Ray cluster (`ray start --head`) and stop it."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import psutil
import pytest

from fedtitan.config import load_config
from simulations.run import run

pytestmark = pytest.mark.slow


def _ray(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ray"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def _stop_cluster(temp_dir: str) -> None:
    """Stop only the cluster this test started (``ray stop`` would stop every Ray on the machine)."""
    victims = []
    for p in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or []):
            try:
                victims += [*p.children(recursive=True), p]
            except psutil.Error:
                pass
    for v in victims:
        try:
            v.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=15)


def test_run_attaches_to_existing_cluster(tmp_path, free_port):
    port = str(free_port())
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    started = _ray("start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                   "--disable-usage-stats", f"--temp-dir={temp_dir}")
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        cfg = load_config("quickstart", ["data.num_clients=3", "run.rounds=2", "server.fraction=1.0",
                                         "selection.local_steps=2"])
        summary = run(cfg, tmp_path, ray_address=f"127.0.0.1:{port}", quiet=True)
        assert summary["rounds"] == 2
        clients = pd.read_csv(tmp_path / "clients.csv")
        assert (clients.status == "ok").all() and len(clients) == 6
        status = _ray("status", f"--address=127.0.0.1:{port}")
        assert status.returncode == 0  # the cluster outlives the run
    finally:
        _stop_cluster(temp_dir)
