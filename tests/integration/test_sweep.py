"""A real sweep, killed mid-way and resumed; then the report. Runs sharing one simulation; SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ARGS = ["sweep", "quickstart", "--grid", "selection.method=titan,rs,is", "--seeds", "1", "--quiet",
        "--set", "data.num_clients=3", "--set", "run.rounds=2", "--set", "server.fraction=1.0",
        "--set", "selection.local_steps=2", "--set", "fleet.mix=rpi4:1"]


def test_sweep_resume_after_kill_and_report(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "simulations.cli", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            idx = out / "index.csv"
            if idx.exists() and (pd.read_csv(idx).status == "done").sum() >= 1:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first run of the sweep did not finish in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = set(pd.read_csv(out / "index.csv").query("status == 'done'").run_id)
    assert 1 <= len(done_before) < 3
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    idx = pd.read_csv(out / "index.csv")
    assert len(idx) == 3 and idx.run_id.is_unique and (idx.status == "done").all()
    assert idx.wall_s.notna().all()  # the run finished before the kill keeps its wall time
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == sorted(idx.run_id)  # no .partial leftovers, nothing duplicated
    for rid in idx.run_id:
        rounds = pd.read_csv(out / rid / "rounds.csv")
        assert rounds.server_round.tolist() == [1, 2]
    assert (out / "report.html").exists() and "speedup_vs_rs" in res.stdout
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Time to accuracy" in html


def test_runs_sharing_one_simulation_equal_standalone_runs(tmp_path):
    """A sweep runs its runs in one simulation on warm client processes; each run's clients
    start from fresh state (rs runs first here, so Titan would inherit its stream position
    and battery if state leaked), and a run uses only its own partitions."""
    from fedtitan.config import load_config
    from simulations.run import run
    from simulations.sweep import sweep

    base = ["data.num_clients=3", "run.rounds=2", "server.fraction=1.0", "selection.local_steps=2",
            "fleet.mix=rpi4:1", "simulation.arrays=object-store"]  # one board serves every run
    root, _, _ = sweep("quickstart", ["selection.method=rs,titan", "data.num_clients=4,3"], 1,
                    [o for o in base if not o.startswith("data.num_clients")], tmp_path / "sw", quiet=True)
    run(load_config("quickstart", [*base, "selection.method=titan"]), tmp_path / "alone", quiet=True)
    swept = pd.read_csv(root / "selection.method=titan__data.num_clients=3__seed=0" / "rounds.csv")
    alone = pd.read_csv(tmp_path / "alone" / "rounds.csv")
    cols = ["accuracy", "loss", "virtual_time_s", "energy_j"]
    pd.testing.assert_frame_equal(swept[cols], alone[cols])
    clients = pd.read_csv(root / "selection.method=titan__data.num_clients=3__seed=0" / "clients.csv")
    assert sorted(clients.partition_id.unique()) == [0, 1, 2]  # the 4th node of the simulation took no part


@pytest.mark.parametrize("verb", ["run", "sweep"])
def test_sigterm_stops_like_ctrl_c(tmp_path, verb, monkeypatch):
    """What Slurm, Kubernetes and `timeout` send: the round finishes, the summary is written,
    Ray is shut down, the exit status is 143 and there is no traceback."""
    import tempfile

    import psutil

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    out = tmp_path / "out"
    common = ["--quiet", "--out", str(out), "--set", "data.num_clients=3", "--set", "run.rounds=300",
              "--set", "server.fraction=1.0"]
    cmd = [sys.executable, "-m", "simulations.cli", verb, "quickstart", *common]
    if verb == "sweep":
        cmd += ["--grid", "selection.method=titan,rs", "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    run_dir = out if verb == "run" else None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if run_dir is None:
                partial = list(out.glob(".partial-*")) if out.exists() else []
                run_dir = partial[0] if partial else None
            if run_dir is not None and (run_dir / "rounds.csv").exists() \
                    and len(pd.read_csv(run_dir / "rounds.csv")) >= 2:
                break
            time.sleep(0.3)
        else:
            pytest.fail("no rounds written in time")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "SIGTERM: stopping after the current round" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["rounds"] >= 2
    assert len(pd.read_csv(run_dir / "rounds.csv")) == summary["rounds"]
    time.sleep(3)
    left = [p for p in psutil.process_iter(["cmdline"]) if ray_tmp in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]
